"""The fuzz suite: seeded hostile and broken inputs run through the command line, each
classified ok / clean error / crash / hang, with integrity checks (see runner, sandbox)."""
