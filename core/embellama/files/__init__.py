"""Model files: the GGUF header, file identity and fingerprints, the cache folder, the default model and the hub."""
