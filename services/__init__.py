"""Long-running services and tools: the local stack, generators, APIs, CDC capture. Run with `dp`."""
