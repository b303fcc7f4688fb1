"""``conveyor``: a command-line client that talks only to the REST API and the WebSocket."""
