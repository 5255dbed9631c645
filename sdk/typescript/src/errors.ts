/**
 * What can go wrong talking to the agent, one class per thing the caller would do differently.
 *
 * Argument mistakes are plain `TypeError`s, as Node's own APIs throw for an invalid argument: they are bugs
 * in the calling code, not conditions to handle.
 */

/** Every error this SDK throws on purpose. */
export class DStackP2PError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The agent's API could not be reached: no socket, nothing listening, or no answer in time.
 *
 * `address` is where the SDK looked (a socket path or a loopback URL).
 */
export class AgentUnreachable extends DStackP2PError {
  readonly address: string;

  constructor(message: string, options: { address: string; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.address = options.address;
  }
}

/**
 * The agent answered with an HTTP error. `status` is the HTTP status, `error` the agent's text, `method`
 * and `path` the request's.
 */
export class AgentError extends DStackP2PError {
  readonly status: number;
  readonly error: string;
  readonly path: string;
  readonly method: string;

  constructor(status: number, error: string, options: { path: string; method?: string }) {
    const method = options.method ?? "GET";
    super(`the agent answered ${status} to ${method} ${options.path}: ${error}`);
    this.status = status;
    this.error = error;
    this.path = options.path;
    this.method = method;
  }
}

/**
 * The agent's reply is not what this SDK understands (not JSON, or a field missing or mistyped).
 *
 * Seen with an agent much older than the SDK, or with something else serving the address.
 */
export class ProtocolError extends DStackP2PError {}

/**
 * The agent serves another cluster contract or runs in another mode than the SDK was given.
 *
 * `field` is `"contract"` or `"mode"`; `expected` is what the SDK was given, `actual` what the agent
 * reports.
 */
export class ConfigMismatch extends DStackP2PError {
  readonly field: "contract" | "mode";
  readonly expected: string;
  readonly actual: string;

  constructor(message: string, options: { field: "contract" | "mode"; expected: string; actual: string }) {
    super(message);
    this.field = options.field;
    this.expected = options.expected;
    this.actual = options.actual;
  }
}

/**
 * The agent reports that it cannot register this node; `reason` is its text, verbatim.
 *
 * The text says what to do: with no seat bound to this instance it includes the `meshctl bind --instance` command for
 * the holder; with no funded sender, which account to fund. `source` is `"registration"` for the
 * agent's registration error, `"chain"` when the chain's RPC is failing (`reason` is then the RPC's error,
 * and the message says so).
 */
export class RegistrationError extends DStackP2PError {
  readonly reason: string;
  readonly source: "registration" | "chain";

  constructor(reason: string, options?: { source?: "registration" | "chain" }) {
    const source = options?.source ?? "registration";
    super(
      source === "chain"
        ? `the agent cannot read the chain, so this node is not registered: ${reason}`
        : reason,
    );
    this.reason = reason;
    this.source = source;
  }
}
