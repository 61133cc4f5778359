//! [`Tokenizer`]: byte-level BPE built from GGUF metadata (or read from `tokenizer.json`) with the
//! `tokenizers` crate, giving the ids Hugging Face's tokenizer gives for the same model.

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper};

use crate::error::{LlmError, Result};

/// GGUF `tokenizer.ggml.token_type` of a control token (special, e.g. `<|im_end|>`).
const TOKEN_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` of a user-defined added token (matched whole, not special).
const TOKEN_USER_DEFINED: i64 = 4;

/// A tokenizer with the model's special ids and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    chat_template: Option<String>,
}

/// What GGUF metadata says about the tokenizer (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (only `"gpt2"`, byte-level BPE, is supported).
    pub model: String,
    /// Token strings by id.
    pub tokens: Vec<String>,
    /// Merges, `"a b"` each, in priority order.
    pub merges: Vec<String>,
    /// Token types by id (1 normal, 3 control, 4 user-defined, …), if given.
    pub token_types: Vec<i64>,
    /// BOS id.
    pub bos: Option<u32>,
    /// EOS id.
    pub eos: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// The Jinja chat template.
    pub chat_template: Option<String>,
}

/// GPT-2's byte ↔ printable-character table (`bytes_to_unicode`): printable Latin-1 bytes map to
/// themselves, the others to `U+0100…` in order.
fn byte_alphabet() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer transformers builds from the same GGUF file (`GPT2Tokenizer`): BPE over
    /// the file's vocabulary and merges (tokens not written in the byte alphabet are re-spelled
    /// byte by byte), GPT-2's byte-level pre-tokenizer and decoder, no prefix space, no BOS added;
    /// control tokens become special tokens, user-defined ones plain added tokens.
    ///
    /// # Errors
    /// [`LlmError::Unsupported`] for another tokenizer model; [`LlmError::Tokenizer`] if the
    /// vocabulary and merges do not make a BPE model.
    pub fn from_gguf_vocab(v: &GgufVocab, path: &Path) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(LlmError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.model {:?}: only byte-level BPE (\"gpt2\") is supported",
                    v.model
                ),
            ));
        }
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let spelled: Vec<String> = v
            .tokens
            .iter()
            .map(|t| {
                if in_alphabet(t) {
                    t.clone()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                }
            })
            .collect();
        let vocab: Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = v
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LlmError::malformed(path, format!("merge {m:?} is not \"a b\"")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(String::new())
            .fuse_unk(false)
            .build()
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let typed = |ty: i64| -> Vec<&String> {
            v.tokens
                .iter()
                .zip(&v.token_types)
                .filter(|(t, k)| **k == ty && in_alphabet(t))
                .map(|(t, _)| t)
                .collect()
        };
        let special: Vec<AddedToken> = typed(TOKEN_CONTROL)
            .into_iter()
            .map(|t| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&special);
        let user: Vec<AddedToken> = typed(TOKEN_USER_DEFINED)
            .into_iter()
            .map(|t| AddedToken::from(t.clone(), false).normalized(false))
            .collect();
        inner.add_tokens(&user);
        Ok(Self {
            inner,
            bos: v.bos,
            eos: v.eos,
            unk: v.unk,
            chat_template: v.chat_template.clone(),
        })
    }

    /// Reads a Hugging Face tokenizer folder: `tokenizer.json`, and from `tokenizer_config.json`
    /// (when present) the chat template; BOS/EOS ids from the model config.
    ///
    /// # Errors
    /// [`LlmError::Io`] / [`LlmError::Tokenizer`] for a missing or invalid `tokenizer.json`.
    pub fn from_hf_dir(dir: &Path, bos: Option<u32>, eos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(LlmError::malformed(&path, "no tokenizer.json"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| LlmError::malformed(&path, format!("not a tokenizer: {e}")))?;
        let cfg = dir.join("tokenizer_config.json");
        let chat_template = std::fs::read_to_string(&cfg)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|j| j.get("chat_template")?.as_str().map(String::from));
        Ok(Self {
            inner,
            bos,
            eos,
            unk: None,
            chat_template,
        })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, the files
    /// transformers' `AutoTokenizer` reads from a model folder.
    ///
    /// # Errors
    /// I/O and serialization errors.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        crate::atomic::write(&path, text.as_bytes())?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let mut cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_prefix_space": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 8192,
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "unk_token": name(self.unk),
        });
        if let Some(t) = &self.chat_template {
            cfg["chat_template"] = json!(t);
        }
        let map = json!({
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "unk_token": name(self.unk),
        });
        for (file, v) in [
            ("tokenizer_config.json", cfg),
            ("special_tokens_map.json", map),
        ] {
            let text =
                serde_json::to_string_pretty(&v).map_err(|e| LlmError::Tokenizer(e.to_string()))?;
            crate::atomic::write(&dir.join(file), text.as_bytes())?;
        }
        Ok(())
    }

    /// Token ids of `text` (special tokens written in the text are recognised; no BOS added).
    ///
    /// # Errors
    /// [`LlmError::Tokenizer`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept).
    ///
    /// # Errors
    /// [`LlmError::Tokenizer`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BOS id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// EOS id, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The model's chat template (Jinja), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `prompt` as one user turn of a ChatML conversation ready for the assistant's answer
    /// (`<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`), as SmolLM2's template renders it
    /// without a system prompt. Other templates are not interpreted.
    ///
    /// # Errors
    /// [`LlmError::Invalid`] if the model's template is not ChatML.
    pub fn chat_prompt(&self, prompt: &str) -> Result<String> {
        match &self.chat_template {
            Some(t) if t.contains("<|im_start|>") => Ok(format!(
                "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
            )),
            _ => Err(LlmError::Invalid(
                "--chat needs a ChatML chat template (<|im_start|>…); this model has none".into(),
            )),
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_vocab() -> GgufVocab {
        crate::tiny::vocab()
    }

    #[test]
    fn builds_round_trips_and_keeps_specials_whole() {
        let t = Tokenizer::from_gguf_vocab(&tiny_vocab(), Path::new("x.gguf")).unwrap();
        let text = "hello world, ünïcode 29 June\n<|im_end|>";
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(
            &ids[..2],
            &[t.token_id("h").unwrap(), t.token_id("e").unwrap()]
        );
        let the = t.encode(" the").unwrap();
        assert_eq!(the, [t.token_id("Ġthe").unwrap()]);
        let chat = t.chat_prompt("hi").unwrap();
        assert!(t.encode(&chat).unwrap().starts_with(&[1]));
        let mut v = tiny_vocab();
        v.model = "llama".into();
        assert!(Tokenizer::from_gguf_vocab(&v, Path::new("x.gguf")).is_err());
    }

    #[test]
    fn hf_files_round_trip() {
        let t = Tokenizer::from_gguf_vocab(&tiny_vocab(), Path::new("x.gguf")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        t.save_hf(dir.path()).unwrap();
        let back = Tokenizer::from_hf_dir(dir.path(), Some(1), Some(2)).unwrap();
        let text = "hello <|im_start|>world";
        assert_eq!(back.encode(text).unwrap(), t.encode(text).unwrap());
        assert_eq!(back.chat_template(), t.chat_template());
    }
}
