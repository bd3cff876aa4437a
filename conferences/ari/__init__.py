"""The Asterisk side: the ARI client, the event handlers and the worker loop."""
