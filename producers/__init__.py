"""Producers: turn outside input (files, requests, approvals) into queued card work."""
