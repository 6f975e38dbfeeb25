"""The embedded model: a small Llama the project trains itself to retrieve from its context."""
