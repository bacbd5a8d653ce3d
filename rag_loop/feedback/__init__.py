"""Feedback in: thumbs, chunk labels, corrections, pointers (service); the one fold of an
answer's feedback (labels); review (corrections); an answer's lineage with its feedback
(lineage); the feedback dataset out (export); a simulated user (simulated)."""
