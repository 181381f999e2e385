"""Shared code of the MoCo v2 transfer-evaluation toolkit."""
