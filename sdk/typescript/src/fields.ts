/** Reading the API's JSON objects field by field, by type, for the models (not part of the SDK's exports). */

import { ProtocolError } from "./errors.js";
import { show } from "./show.js";

/** The data fields of a model class: what its constructor takes. */
export type FieldsOf<T> = {
  readonly [K in keyof T as T[K] extends (...args: never[]) => unknown ? never : K]: T[K];
};

const ABSENT: unique symbol = Symbol("absent");

/** Reads one JSON object's fields by type, naming the object and field in its errors. */
export class Fields {
  private readonly obj: Record<string, unknown>;

  constructor(
    value: unknown,
    private readonly what: string,
  ) {
    if (!isObject(value)) {
      throw new ProtocolError(`the agent's ${what} is not a JSON object: ${show(value)}`);
    }
    this.obj = value;
  }

  private get(key: string, fallback: unknown = ABSENT): unknown {
    const value = Object.hasOwn(this.obj, key) ? this.obj[key] : ABSENT;
    if (value !== ABSENT) return value;
    if (fallback === ABSENT) {
      throw new ProtocolError(
        `the agent's ${this.what} has no field "${key}": is the agent older than this SDK?`,
      );
    }
    return fallback;
  }

  private wrong(key: string, value: unknown, what = "of the wrong type"): ProtocolError {
    return new ProtocolError(`the agent's ${this.what} has "${key}" = ${show(value)}, ${what}`);
  }

  private typed<T>(
    key: string,
    check: (v: unknown) => v is T,
    nullable: boolean,
    fallback?: unknown,
  ): T | null {
    const value = this.get(key, fallback === undefined ? ABSENT : fallback);
    if (value === null && nullable) return null;
    if (!check(value)) throw this.wrong(key, value);
    return value;
  }

  text(key: string): string {
    return this.typed(key, isString, false) as string;
  }

  optText(key: string): string | null {
    return this.typed(key, isString, true, null);
  }

  integer(key: string, fallback?: number): number {
    return this.typed(key, isInteger, false, fallback) as number;
  }

  optInteger(key: string): number | null {
    return this.typed(key, isInteger, true, null);
  }

  flag(key: string, fallback?: boolean): boolean {
    return this.typed(key, isBoolean, false, fallback) as boolean;
  }

  optFlag(key: string): boolean | null {
    return this.typed(key, isBoolean, true, null);
  }

  object(key: string): Record<string, unknown> {
    return this.typed(key, isObject, false) as Record<string, unknown>;
  }

  optObject(key: string): Record<string, unknown> | null {
    return this.typed(key, isObject, true, null);
  }

  choice<const C extends readonly string[]>(key: string, values: C, fallback?: C[number]): C[number] {
    const value = this.typed(key, isString, false, fallback) as string;
    if (!values.includes(value)) {
      throw this.wrong(key, value, `not one of ${values.join(", ")}: is the agent newer than this SDK?`);
    }
    return value;
  }

  /** A list of strings; `fallback`, if given, when an older agent leaves it out. */
  texts(key: string, fallback?: string[]): string[] {
    const value = this.typed(key, Array.isArray, false, fallback) as unknown[];
    if (!value.every(isString)) throw this.wrong(key, value, "not a list of strings");
    return [...value];
  }

  /** Counts by name (`{"full": 2}`), frozen; an empty map when the field is absent. */
  counts(key: string): Readonly<Record<string, number>> {
    const value = this.typed(key, isObject, false, {}) as Record<string, unknown>;
    if (!Object.values(value).every(isInteger)) throw this.wrong(key, value, "not a map of counts");
    return Object.freeze({ ...value } as Record<string, number>);
  }

  /** A list of integers; `fallback` when an older agent leaves it out. */
  integers(key: string, fallback: number[]): number[] {
    const value = this.typed(key, Array.isArray, false, fallback) as unknown[];
    if (!value.every(isInteger)) throw this.wrong(key, value, "not a list of integers");
    return [...value] as number[];
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function isString(v: unknown): v is string {
  return typeof v === "string";
}
function isBoolean(v: unknown): v is boolean {
  return typeof v === "boolean";
}
// JSON has one number type; 3.0 parses as 3, so only a fractional value or a non-number is refused.
function isInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}
