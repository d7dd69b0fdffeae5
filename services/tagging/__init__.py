"""The tagging service: tag catalogue, manual tags, member features fed by events,
rule and score tags computed in batch runs (and per member in real time), and
segments materialised as Roaring bitmaps over a dense member index."""
