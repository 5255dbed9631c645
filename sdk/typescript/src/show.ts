/** A value as the SDK's messages quote it: JSON-like, and at most 80 characters. */
export function show(value: unknown): string {
  let text: string;
  if (typeof value === "string") {
    text = JSON.stringify(value);
  } else if (
    value === null ||
    value === undefined ||
    typeof value === "number" ||
    typeof value === "boolean" ||
    typeof value === "bigint"
  ) {
    text = String(value);
  } else if (value instanceof Uint8Array) {
    text = `${value.constructor.name}(${value.length})`;
  } else {
    try {
      text = JSON.stringify(value) ?? String(value);
    } catch {
      text = Object.prototype.toString.call(value);
    }
  }
  return text.length <= 80 ? text : text.slice(0, 77) + "...";
}
