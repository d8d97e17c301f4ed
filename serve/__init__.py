"""`p4r serve`: explainable reranking and recommendation over HTTP, from the persona index."""
