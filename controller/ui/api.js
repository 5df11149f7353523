// The API as the console uses it: the key (this tab's session storage), requests with it as a
// bearer token, problem documents as errors, and the tick stream read with fetch() (an
// EventSource cannot send the key), reconnected with a backoff.

const KEY = "gridpilot.key";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

/** An answer that is not a success: its status and, when the API sent one, the problem
 * document (RFC 9457: title, detail, errors [{field, message, bounds, value}]). */
export class ApiError extends Error {
  constructor(status, problem, method, path) {
    const title = problem?.title || (status ? `HTTP ${status}` : "no answer");
    const detail = problem?.detail ? `: ${problem.detail}` : "";
    super(`${method} ${path}: ${title}${detail}`);
    this.status = status;
    this.problem = problem || null;
    this.retryAfter = null;
  }
  get errors() {
    return this.problem?.errors || [];
  }
}

/** The rows of a list: the API answers a page ({events: [...], next_before_id}) or, before
 * lists were paged, the array itself. */
export function listOf(body, name) {
  return Array.isArray(body) ? body : body?.[name] || [];
}

/** Called when a request is refused for its key (401): the console signs out. */
let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export async function api(method, path, body, key = session.key) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, { title: "Server unreachable", detail: String(exc.message || exc) },
      method, path);
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, data, method, path);
    error.retryAfter = response.headers.get("retry-after");
    if (response.status === 401 && key === session.key) onUnauthorized(error);
    throw error;
  }
  return data;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });

const IDLE_MS = 15000; // the server sends a comment every 5 s while no tick comes
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];

/**
 * The tick stream (`GET /v1/stream`): `onTick(summary)` for each event's data (JSON),
 * `onStatus({state, ...})` as the link changes: connecting, open, retrying (with delay_ms and
 * error), refused (401/403: no retry). Returns {close()}.
 */
export function openStream(key, { onTick, onStatus }) {
  const stop = new AbortController();
  let attempt = 0;

  async function once() {
    const request = new AbortController();
    const cancel = () => request.abort();
    stop.signal.addEventListener("abort", cancel);
    let idle = setTimeout(cancel, IDLE_MS);
    const alive = () => {
      clearTimeout(idle);
      idle = setTimeout(cancel, IDLE_MS);
    };
    try {
      onStatus({ state: "connecting" });
      const response = await fetch("/v1/stream", {
        headers: { Authorization: `Bearer ${key}`, Accept: "text/event-stream" },
        cache: "no-store",
        signal: request.signal,
      });
      if (response.status === 401 || response.status === 403) {
        const problem = await response.json().catch(() => null);
        return { refused: new ApiError(response.status, problem, "GET", "/v1/stream") };
      }
      if (!response.ok) {
        const problem = await response.json().catch(() => null);
        throw new ApiError(response.status, problem, "GET", "/v1/stream");
      }
      onStatus({ state: "open" });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the stream ended");
        alive();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            // An event ends at a blank line: its data lines joined.
            if (data.length) {
              const payload = data.join("\n");
              data = [];
              attempt = 0;
              onTick(JSON.parse(payload));
            }
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
          } // comments (":") and other fields (retry) are not needed here
        }
      }
    } finally {
      clearTimeout(idle);
      stop.signal.removeEventListener("abort", cancel);
    }
  }

  (async () => {
    while (!stop.signal.aborted) {
      try {
        const outcome = await once();
        if (outcome?.refused) {
          onStatus({ state: "refused", error: outcome.refused });
          return;
        }
      } catch (exc) {
        if (stop.signal.aborted) return;
        const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
        const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
        attempt += 1;
        const error = exc?.name === "AbortError" ? "no data for 15 s" : String(exc.message || exc);
        onStatus({ state: "retrying", delay_ms: delay, error });
        await sleep(delay, stop.signal);
      }
    }
  })();

  return { close: () => stop.abort() };
}

/** The JSON schema of one of the API's request bodies (for bounds and descriptions). */
let openapi = null;
export async function schemaOf(name) {
  openapi ??= fetch("/openapi.json", { cache: "no-store" }).then((r) => {
    if (!r.ok) throw new ApiError(r.status, null, "GET", "/openapi.json");
    return r.json();
  });
  try {
    return (await openapi).components?.schemas?.[name] || null;
  } catch (exc) {
    openapi = null; // try again next time
    throw exc;
  }
}
