"""Corpus preparation on Spark: readers, cleaning, k-core, leave-one-out split, LLM review samples."""
