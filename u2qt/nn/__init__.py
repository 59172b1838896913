"""u2qt/nn: building blocks every model here shares (attention block, feed-forward, MLP) and the
masked mean. Imports nothing else of u2qt."""
