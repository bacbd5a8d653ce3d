"""Feedback in: thumbs, chunk labels, corrections, pointers (service); review (corrections);
the feedback dataset out (export)."""
