//! A Llama-family decoder on candle with AQLM and OFT projections.
