"""`p4r train`: the alignment encoder on Ray Train, logged and registered in MLflow."""
