"""`p4r embed`: base embeddings of every persona, interaction and item text."""
