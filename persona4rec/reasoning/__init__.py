"""LLM reasoning without the engines: prompts, answer contracts, validation, de-duplication, result cache.

Everything here talks to an engine only through ``ray_actors.engines.base.Engine``'s interface, so it
imports no LLM library and is tested with the real engines injected.
"""
