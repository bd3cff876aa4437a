# The two commands: `make run` and `make test`. Both set everything up first.
# `make demo`: the site with the sandbox Asterisk and simulated callers, to see it work.
.PHONY: run demo test lint asterisk asterisk-stop

# Optional local configuration for `make run` (see .env.example).
-include .env
export

run:
	scripts/run

demo:
	scripts/demo

test:
	scripts/test

lint:
	scripts/setup --dev
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

asterisk:
	scripts/asterisk-sandbox start

asterisk-stop:
	scripts/asterisk-sandbox stop
