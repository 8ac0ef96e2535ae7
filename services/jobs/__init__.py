"""The Jobs service: validates, records and enqueues jobs; answers and cancels them."""
