"""`p4r index`: the persona index in Milvus, versioned behind an alias."""
