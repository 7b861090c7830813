"""Real, small servers for tests, benchmarks and demos: a mock OpenAI upstream and a uvicorn-in-a-thread runner."""
