"""``p4r reason``: item summaries and personas from an LLM, over an actor pool, resumable and incremental."""
