"""Sliding-window inference and the end-to-end segmentation pipeline."""
