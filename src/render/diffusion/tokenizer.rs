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
    let shown = format!("{} and {}", vocab.display(), merges.display());
    let bpe = BPE::builder().files(
        vocab.to_string_lossy().into_owned(),
        merges.to_string_lossy().into_owned(),
    );
    clip_with(bpe, &shown)
}

/// OpenAI CLIP's BPE merges, the ones Stable Diffusion's text encoders (CLIP ViT-L,
/// OpenCLIP ViT-H and bigG) were trained with: single-file checkpoints ship no
/// tokenizer.
const CLIP_MERGES: &str = include_str!("clip-merges.txt");

/// The 256 characters CLIP's byte-level BPE writes bytes as, in vocabulary order:
/// printable bytes as themselves, then the others as the characters from U+0100 on.
fn byte_characters() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut chars: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    chars.extend(
        (0..256u32)
            .filter(|&b| !printable(b))
            .enumerate()
            .filter_map(|(n, _)| char::from_u32(256 + n as u32)),
    );
    chars
}

/// CLIP's vocabulary as OpenAI built it, from the merges compiled into renderq: the
/// byte characters, each again with `</w>`, every merge, then the start and end
/// tokens (49,408 tokens, numbered as the hub's `vocab.json` numbers them); and
/// the merges.
fn clip_vocabulary() -> (Vec<String>, Vec<(String, String)>) {
    let merges: Vec<(String, String)> = CLIP_MERGES
        .lines()
        .filter(|l| !l.starts_with("#version"))
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bytes = byte_characters();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend([BOS.to_string(), EOS.to_string()]);
    (tokens, merges)
}

/// CLIP's tokenizer from the vocabulary compiled into renderq.
pub fn clip() -> Result<Tokenizer, String> {
    let (tokens, merges) = clip_vocabulary();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    clip_with(
        BPE::builder().vocab_and_merges(vocab, merges),
        "CLIP's built-in vocabulary",
    )
}

/// Writes the compiled-in vocabulary as diffusers repositories ship it, `vocab.json`
/// and `merges.txt` in `dir`.
pub fn write_clip(dir: &Path) -> std::io::Result<()> {
    let (tokens, _) = clip_vocabulary();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i.into()))
        .collect();
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::Value::Object(vocab).to_string(),
    )?;
    std::fs::write(dir.join("merges.txt"), CLIP_MERGES)
}

/// CLIP's tokenizer around a BPE model (`shown`: where its vocabulary came from).
fn clip_with(bpe: tokenizers::models::bpe::BpeBuilder, shown: &str) -> Result<Tokenizer, String> {
    let bpe = bpe
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("{shown} are not a BPE vocabulary: {e}"))?;
    let id = |token: &str| {
        tokenizers::Model::token_to_id(&bpe, token)
            .ok_or_else(|| format!("{shown} have no `{token}` token"))
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
