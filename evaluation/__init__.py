"""Offline evaluation: ranking metrics with confidence intervals and paired tests, the rerankers
compared on the same candidates, and the report (Markdown and plots)."""
