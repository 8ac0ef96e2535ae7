"""The three distributions as users get them: wheels built from a clean copy of the checkout,
installed into fresh virtual environments."""
