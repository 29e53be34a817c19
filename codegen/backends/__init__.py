"""One package per target language: its printer, what it emits, and how it is loaded."""
