"""Software stacks (LCG-style releases and nightlies): a description becomes a dependency graph,
content-hashed builds, the releases/views layout, summary files and CI results, published into a
repository as one transaction. Talks to the core only through its public API (a transaction,
the verified reader)."""
