"""``p4r align``: a positive persona for every labelable training interaction (encoder training labels)."""
