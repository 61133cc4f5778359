//! oftq's layers as candle modules.
