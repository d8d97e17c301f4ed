"""`p4r promote`: move the champion alias to a better registered encoder."""
