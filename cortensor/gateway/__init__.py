"""The HTTP gateway: the network behind OpenAI-shaped endpoints, for callers that do not
speak AMQP (`cortensor gateway`).

keys: the API keys a caller presents, read from the registry `cortensor credentials`
keeps; errors: every refusal in OpenAI's error shape with its HTTP status; shapes: the
request and response bodies; tasks: one route per task (embeddings, classifications,
transcriptions); app: the application, its authentication, models and jobs routes, and
the one SDK connection it holds.
"""
