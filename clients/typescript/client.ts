// A Darkroom client in TypeScript, built from the .proto files alone: protos/darkroom/v1/
// and the vendored google.rpc protos in third_party/googleapis/. Nothing from the Python
// side. It loads the protos at run time with @grpc/proto-loader; its types come from
// proto-loader-gen-types (see README.md), so a proto change that breaks it fails `tsc`.
//
//   node build/client.js JOBS_ADDR EVENTS_ADDR TOKEN SCENARIO [ARGS...]
//
// Scenarios, each printing JSON lines to stdout:
//   submit-watch               submit a small job, then watch it to its terminal event
//   resume JOB_ID AFTER_ID     watch JOB_ID from after event AFTER_ID to the terminal event
//   bad-request                submit an invalid job and decode its google.rpc details
//
// Exit status: 0 when the scenario went as described, 1 otherwise (the reason on stderr).
// The protos are found under $DARKROOM_REPO_ROOT (default: the working directory).

import { randomUUID } from "node:crypto";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType as ErrorDetailsProto } from "./generated/error_details";
import type { ProtoGrpcType as EventsProto } from "./generated/events_service";
import type { ProtoGrpcType as JobsProto } from "./generated/jobs_service";
import type { ProtoGrpcType as StatusProto } from "./generated/status";
import type { EventsServiceClient } from "./generated/darkroom/v1/EventsService";
import type { JobEvent__Output } from "./generated/darkroom/v1/JobEvent";
import type { JobsServiceClient } from "./generated/darkroom/v1/JobsService";
import type { SubmitJobRequest } from "./generated/darkroom/v1/SubmitJobRequest";
import type { SubmitJobResponse__Output } from "./generated/darkroom/v1/SubmitJobResponse";
import type { Any__Output } from "./generated/google/protobuf/Any";
import type { Status__Output } from "./generated/google/rpc/Status";

type Proto = JobsProto & EventsProto & StatusProto & ErrorDetailsProto;

// The same options proto-loader-gen-types is run with, so the generated types describe
// exactly the objects these loaders produce.
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const PROTO_FILES = [
  "darkroom/v1/jobs_service.proto",
  "darkroom/v1/events_service.proto",
  "google/rpc/status.proto",
  "google/rpc/error_details.proto",
];

const UNARY_DEADLINE_MS = 10_000;
const WATCH_DEADLINE_MS = 60_000;
const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const TERMINAL_KINDS = new Set(["succeeded", "failed", "cancelled"]);

function load(repoRoot: string): Proto {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    ...LOADER_OPTIONS,
    includeDirs: [path.join(repoRoot, "protos"), path.join(repoRoot, "third_party", "googleapis")],
  });
  return grpc.loadPackageDefinition(definition) as unknown as Proto;
}

function print(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function deadline(ms: number): Date {
  return new Date(Date.now() + ms);
}

class Darkroom {
  private readonly jobs: JobsServiceClient;
  private readonly events: EventsServiceClient;
  private readonly metadata = new grpc.Metadata();

  constructor(
    readonly proto: Proto,
    jobsAddress: string,
    eventsAddress: string,
    token: string,
  ) {
    const credentials = grpc.credentials.createInsecure();
    this.jobs = new proto.darkroom.v1.JobsService(jobsAddress, credentials);
    this.events = new proto.darkroom.v1.EventsService(eventsAddress, credentials);
    this.metadata.set("authorization", `Bearer ${token}`);
  }

  submit(request: SubmitJobRequest): Promise<SubmitJobResponse__Output> {
    return new Promise((resolve, reject) => {
      this.jobs.SubmitJob(
        request,
        this.metadata,
        { deadline: deadline(UNARY_DEADLINE_MS) },
        (error, response) => {
          if (error) reject(error);
          else if (response) resolve(response);
          else reject(new Error("SubmitJob answered neither a response nor an error"));
        },
      );
    });
  }

  /** Every event of the watch, in order, until the server closes the stream. */
  async *watch(jobId: string, afterEventId = ""): AsyncGenerator<JobEvent__Output> {
    const call = this.events.WatchJob(
      { job_id: jobId, after_event_id: afterEventId },
      this.metadata,
      { deadline: deadline(WATCH_DEADLINE_MS) },
    );
    try {
      for await (const response of call) {
        if (response.event) yield response.event;
      }
    } finally {
      call.cancel();
    }
  }

  close(): void {
    this.jobs.close();
    this.events.close();
  }
}

function describe(event: JobEvent__Output): Record<string, unknown> {
  const line: Record<string, unknown> = {
    type: "event",
    event_id: event.event_id,
    job_id: event.job_id,
    kind: event.kind ?? null,
  };
  const job =
    event.snapshot?.job ?? event.succeeded?.job ?? event.failed?.job ?? event.cancelled?.job;
  if (job) line.state = job.state;
  if (event.queued) line.attempt = event.queued.attempt;
  if (event.started) line.attempt = event.started.attempt;
  if (event.progress) {
    line.attempt = event.progress.attempt;
    line.step = event.progress.progress?.step ?? 0;
    line.total_steps = event.progress.progress?.total_steps ?? 0;
  }
  if (event.succeeded?.job) line.outputs = event.succeeded.job.outputs.length;
  return line;
}

async function printWatch(client: Darkroom, jobId: string, afterEventId: string): Promise<void> {
  let count = 0;
  let last: string | null = null;
  for await (const event of client.watch(jobId, afterEventId)) {
    print(describe(event));
    count += 1;
    last = event.kind ?? null;
  }
  print({ type: "end", events: count, terminal: last !== null && TERMINAL_KINDS.has(last) });
}

async function submitWatch(client: Darkroom): Promise<void> {
  const requestId = randomUUID();
  const response = await client.submit({
    request_id: requestId,
    spec: { prompt: "a red fox", width: 64, height: 64, steps: 4 },
  });
  const job = response.job;
  if (!job) throw new Error("SubmitJob returned no job");
  print({
    type: "submitted",
    job_id: job.id,
    request_id: job.request_id,
    state: job.state,
    replayed: response.replayed,
    spec: {
      prompt: job.spec?.prompt,
      width: job.spec?.width,
      height: job.spec?.height,
      steps: job.spec?.steps,
    },
  });
  await printWatch(client, job.id, "");
}

/** The rich status in the trailers: a google.rpc.Status, decoded by the vendored proto. */
function statusDetails(proto: Proto, error: grpc.ServiceError): Status__Output {
  const values = error.metadata?.get(STATUS_DETAILS_KEY) ?? [];
  const first = values[0];
  if (!Buffer.isBuffer(first)) {
    throw new Error(`the error has no ${STATUS_DETAILS_KEY} trailer: ${error.message}`);
  }
  return proto.google.rpc.Status.deserialize(first);
}

/** One google.protobuf.Any detail, decoded by the message its type_url names. */
function decodeDetail(proto: Proto, detail: Any__Output): Record<string, unknown> {
  const typeName = detail.type_url.slice(detail.type_url.lastIndexOf("/") + 1);
  switch (typeName) {
    case "google.rpc.BadRequest": {
      const badRequest = proto.google.rpc.BadRequest.deserialize(detail.value);
      return {
        type: typeName,
        field_violations: badRequest.field_violations.map((violation) => ({
          field: violation.field,
          description: violation.description,
        })),
      };
    }
    case "google.rpc.ErrorInfo": {
      const info = proto.google.rpc.ErrorInfo.deserialize(detail.value);
      return { type: typeName, reason: info.reason, domain: info.domain, metadata: info.metadata };
    }
    default:
      return { type: typeName };
  }
}

async function badRequest(client: Darkroom): Promise<void> {
  let error: grpc.ServiceError;
  try {
    await client.submit({
      request_id: randomUUID(),
      spec: { prompt: "", width: 100, height: 64, steps: 999 },
    });
    throw new Error("SubmitJob accepted an invalid job");
  } catch (caught) {
    if (!(caught instanceof Error) || !("code" in caught)) throw caught;
    error = caught as grpc.ServiceError;
  }
  const status = statusDetails(client.proto, error);
  const details = status.details.map((detail) => decodeDetail(client.proto, detail));
  const info = details.find((detail) => detail.type === "google.rpc.ErrorInfo");
  const violations = details
    .filter((detail) => detail.type === "google.rpc.BadRequest")
    .flatMap((detail) => detail.field_violations as object[]);
  print({
    type: "error",
    code: error.code,
    code_name: grpc.status[error.code] ?? null,
    message: error.details,
    status: { code: status.code, message: status.message },
    detail_types: status.details.map((detail) => detail.type_url),
    error_info: info ? { reason: info.reason, domain: info.domain, metadata: info.metadata } : null,
    violations,
  });
}

async function main(argv: string[]): Promise<number> {
  const [jobsAddress, eventsAddress, token, scenario, ...rest] = argv;
  if (!jobsAddress || !eventsAddress || !token || !scenario) {
    process.stderr.write(
      "usage: client.js JOBS_ADDR EVENTS_ADDR TOKEN submit-watch|resume JOB_ID AFTER_ID|bad-request\n",
    );
    return 2;
  }
  const proto = load(process.env.DARKROOM_REPO_ROOT ?? process.cwd());
  const client = new Darkroom(proto, jobsAddress, eventsAddress, token);
  try {
    switch (scenario) {
      case "submit-watch":
        await submitWatch(client);
        break;
      case "resume": {
        const [jobId, afterEventId] = rest;
        if (!jobId || !afterEventId) throw new Error("resume needs JOB_ID and AFTER_EVENT_ID");
        await printWatch(client, jobId, afterEventId);
        break;
      }
      case "bad-request":
        await badRequest(client);
        break;
      default:
        throw new Error(`unknown scenario ${JSON.stringify(scenario)}`);
    }
  } finally {
    client.close();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    process.stderr.write(`${text}\n`);
    process.exitCode = 1;
  },
);
