/** The field a refusal names: what `fn` throws carries it (a PagepairError's field); undefined where `fn` does not throw or names none. */
export function refusedField(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as { field?: string }).field;
  }
}
