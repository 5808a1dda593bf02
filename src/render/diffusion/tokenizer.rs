//! CLIP's tokenizer: from a `tokenizer.json`, or built from the `vocab.json` and
//! `merges.txt` that diffusers repositories ship, the way transformers builds it
//! (byte-level BPE with a `</w>` word suffix, NFC, whitespace runs made one space,
//! lower case, CLIP's split pattern, start and end tokens around the prompt).

use std::path::Path;

use tokenizers::{
    AddedToken, Tokenizer,
    decoders::byte_level::ByteLevel as ByteLevelDecoder,
    models::bpe::BPE,
    normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers},
    pre_tokenizers::{
        byte_level::ByteLevel,
        sequence::Sequence as PreTokenizers,
        split::{Split, SplitPattern},
    },
    processors::roberta::RobertaProcessing,
    tokenizer::SplitDelimiterBehavior,
};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenizer pattern: its special tokens, contractions, letter runs,
/// single digits, and runs of anything else that is not a space.
const SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The tokenizer in `dir`: its `tokenizer.json`, or else CLIP's built from
/// `vocab.json` and `merges.txt`. `Err` names what is missing or unreadable.
pub fn load(dir: &Path) -> Result<Tokenizer, String> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json)
            .map_err(|e| format!("{} is not a tokenizer.json: {e}", json.display()));
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.is_file() && merges.is_file() {
        return clip_from_files(&vocab, &merges);
    }
    Err(format!(
        "no tokenizer in {}: expected tokenizer.json, or vocab.json and merges.txt",
        dir.display()
    ))
}

/// CLIP's tokenizer from a BPE vocabulary and its merges.
pub fn clip_from_files(vocab: &Path, merges: &Path) -> Result<Tokenizer, String> {
    let shown = || format!("{} and {}", vocab.display(), merges.display());
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("{} are not a BPE vocabulary: {e}", shown()))?;
    let id = |token: &str| {
        tokenizers::Model::token_to_id(&bpe, token)
            .ok_or_else(|| format!("{} have no `{token}` token", shown()))
    };
    let (bos, eos) = (id(BOS)?, id(EOS)?);
    let built = |e: tokenizers::Error| format!("building CLIP's tokenizer: {e}");
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(built)?
            .into(),
            Lowercase.into(),
        ])))
        .map_err(built)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        Split::new(
            SplitPattern::Regex(SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(built)?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    tokenizer
        .add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
        .map_err(built)?;
    Ok(tokenizer)
}

/// A prompt's ids as the text encoder takes them: start token, the prompt, end
/// token, then `pad` up to `max`. A longer prompt is cut before its end token, which
/// stays last, as transformers truncates.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    prompt: &str,
    max: usize,
    pad: u32,
) -> Result<Vec<u32>, String> {
    let encoding = tokenizer
        .encode(prompt, true)
        .map_err(|e| format!("tokenizing: {e}"))?;
    let mut ids = encoding.get_ids().to_vec();
    if ids.len() > max {
        let end = *ids.last().expect("longer than max, so not empty");
        ids.truncate(max.saturating_sub(1));
        ids.push(end);
    }
    ids.resize(max, pad);
    Ok(ids)
}
