"""Generation: from a chunk of URL rows to openers. The chunk worker, the prompt, the OpenAI
client (and dummy mode), the output guard, the shared Redis rate limiter, batch mode, the
chunk window and prices. Never imports jobs: the job services call down into it."""
