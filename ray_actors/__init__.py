"""Long-lived Ray workers: LLM engines (persona reasoning) and embedders. Arrives with the reasoning stage."""
