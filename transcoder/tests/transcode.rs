//! Transcoding real masters: every tier is valid Ogg Vorbis of the exact resampled length;
//! damaged masters are refused with a reason.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use cadenza_transcoder::{OUTPUT_RATE, TranscodeOptions, seal, transcode};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/flac")
        .join(name)
}

/// Frames an independent decode of an Ogg Vorbis file yields.
fn vorbis_frames(ogg: &[u8]) -> u64 {
    let mss = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(ogg.to_vec())),
        Default::default(),
    );
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .unwrap();
    let track = format.default_track(TrackType::Audio).unwrap();
    let id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .unwrap()
        .audio()
        .unwrap()
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .unwrap();
    let mut frames = 0u64;
    while let Some(packet) = format.next_packet().unwrap() {
        if packet.track_id == id {
            frames += decoder.decode(&packet).unwrap().frames() as u64;
        }
    }
    frames
}

fn expected_output(master_frames: u64, rate: u32) -> u64 {
    (master_frames * u64::from(OUTPUT_RATE) + u64::from(rate) / 2) / u64::from(rate)
}

#[test]
fn every_layout_and_rate_transcodes_to_three_exact_length_tiers() {
    for name in [
        "stereo-44k1.flac",
        "mono.flac",
        "surround-5.1.flac",
        "rate-22050.flac",
    ] {
        let done = transcode(&fixture(name), &TranscodeOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(done.renditions.len(), 3);
        assert_eq!(
            done.output_frames,
            expected_output(done.master_frames, done.master.sample_rate),
            "{name}"
        );
        for r in &done.renditions {
            assert!(r.ogg.starts_with(b"OggS"), "{name}");
            let decoded = vorbis_frames(&r.ogg);
            // Gapless: the decoder trims to the last granule position, so the decoded length
            // is the encoded length exactly.
            assert_eq!(decoded, done.output_frames, "{name} {:?}", r.quality);
        }
    }
}

#[test]
fn the_same_master_gives_the_same_bytes_and_sealing_uses_fresh_keys() {
    let options = TranscodeOptions {
        serial_seed: 7,
        ..Default::default()
    };
    let a = transcode(&fixture("mono.flac"), &options).unwrap();
    let b = transcode(&fixture("mono.flac"), &options).unwrap();
    for (x, y) in a.renditions.iter().zip(&b.renditions) {
        assert_eq!(x.ogg, y.ogg, "{:?} not deterministic", x.quality);
    }
    let s1 = seal(&a.renditions[0]);
    let s2 = seal(&a.renditions[0]);
    assert_ne!(s1.record.key, s2.record.key);
    assert_ne!(s1.record.file_id, s2.record.file_id);
    assert_eq!(s1.record.plaintext_sha256, s2.record.plaintext_sha256);
    let mut plain = s1.bytes.clone();
    s1.record.key.apply_at(0, &mut plain);
    assert_eq!(plain, a.renditions[0].ogg);
}

#[test]
fn higher_tiers_spend_more_bits() {
    let done = transcode(&fixture("stereo-44k1.flac"), &TranscodeOptions::default()).unwrap();
    let rates: Vec<u32> = done.renditions.iter().map(|r| r.bitrate_kbps).collect();
    assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
}

#[test]
fn damaged_and_non_audio_masters_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.flac");
    std::fs::write(&junk, b"fLaC this is not audio").unwrap();
    let truncated = dir.path().join("truncated.flac");
    let whole = std::fs::read(fixture("stereo-44k1.flac")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    for path in [junk, truncated, fixture("faulty-metadata-length.flac")] {
        match transcode(&path, &TranscodeOptions::default()) {
            Err(e) => {
                assert!(e.is_permanent(), "{}: {e}", path.display());
                eprintln!("{}: {e}", path.display());
            }
            Ok(done) => panic!(
                "{} transcoded to {} frames",
                path.display(),
                done.output_frames
            ),
        }
    }
}

/// `ogginfo` (vorbis-tools) validates every tier when it is installed.
#[test]
fn ogginfo_accepts_every_tier() {
    if std::process::Command::new("ogginfo")
        .arg("-h")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: ogginfo not installed (apt-get install vorbis-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let done = transcode(&fixture("surround-5.1.flac"), &TranscodeOptions::default()).unwrap();
    for r in &done.renditions {
        let path = dir.path().join(format!("{}.ogg", r.quality.as_str()));
        std::fs::write(&path, &r.ogg).unwrap();
        let out = std::process::Command::new("ogginfo")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ogginfo failed on {:?}:\n{text}",
            r.quality
        );
        assert!(
            !text.contains("WARNING"),
            "ogginfo warns on {:?}:\n{text}",
            r.quality
        );
    }
}
