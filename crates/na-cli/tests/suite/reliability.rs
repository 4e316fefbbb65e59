//! The reliability issue's cases through the real binary, each asserting
//! what is on disk afterwards: special-file targets, failed commits, aliased
//! paths, closed and full standard output, checkpoints written as one set
//! (full disk, damage, interrupts), temporary files on SIGINT, limits, and
//! one-line messages.
//!
//! Full-disk and read-only cases mount a small tmpfs, which needs root (as
//! in CI); elsewhere those parts say that they are skipped.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bin, na, text};
use na_core::npy::encode_npy_f32;

/// A fresh, empty directory under cargo's per-target temp dir (unmounted
/// and removed on drop).
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("reliability_cli")
            .join(name);
        let _ = Command::new("umount").arg(&d).output();
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
    /// Every entry of the directory, sorted.
    fn names(&self) -> Vec<String> {
        names(&self.0)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn hidden(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Exit status 1 and one error line on stderr (the last; progress lines may
/// come before it), which contains every `want`.
fn fails_with(o: &Output, want: &[&str]) {
    let all = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "status {:?}: {all}", o.status);
    let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {all}");
    assert_eq!(all.trim_end().lines().last(), Some(errors[0]), "{all}");
    for w in want {
        assert!(errors[0].contains(w), "{w:?} not in: {all}");
    }
}

fn write_npy(path: &Path, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    std::fs::write(path, encode_npy_f32(shape, &data).unwrap()).unwrap();
}

/// q, k, v of shape `[1, 24, 1, 4]` in `d`.
fn qkv(d: &Dir) -> [String; 3] {
    for n in ["q.npy", "k.npy", "v.npy"] {
        write_npy(&d.p(n), &[1, 24, 1, 4]);
    }
    [d.s("q.npy"), d.s("k.npy"), d.s("v.npy")]
}

fn attn(q: &[String; 3], extra: &[&str]) -> Output {
    let mut args = vec![
        "attn",
        "--query",
        &q[0],
        "--key",
        &q[1],
        "--value",
        &q[2],
        "--kernel-size",
        "3",
    ];
    args.extend_from_slice(extra);
    na(&args)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Mounts a tmpfs of `bytes` (and `ro` if asked) on `dir`; false where that
/// is not possible (not root, no mount).
fn mount_tmpfs(dir: &Path, bytes: u64, ro: bool) -> bool {
    if !is_root() {
        return false;
    }
    let opts = format!("size={bytes}{}", if ro { ",ro" } else { "" });
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

// 1. Special files: a character device or a FIFO is written, never replaced.
#[test]
fn outputs_to_devices_and_fifos_are_written_not_replaced() {
    let d = Dir::new("special");
    let q = qkv(&d);
    if is_root()
        && Command::new("mknod")
            .args([&d.s("null"), "c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success())
        && Command::new("mknod")
            .args([&d.s("full"), "c", "1", "7"])
            .status()
            .is_ok_and(|s| s.success())
    {
        let o = attn(&q, &["--out", &d.s("null")]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o = attn(&q, &["--out", &d.s("full")]);
        fails_with(&o, &["--out", "full", "No space left"]);
        for n in ["null", "full"] {
            let ft = std::fs::metadata(d.p(n)).unwrap().file_type();
            assert!(ft.is_char_device(), "{n} is still a device");
        }
    } else {
        eprintln!("skipped the device-node part: mknod needs root");
    }
    // A FIFO with a reader: the reader gets the whole .npy; the FIFO stays.
    assert!(Command::new("mkfifo")
        .arg(d.p("fifo"))
        .status()
        .unwrap()
        .success());
    let fifo = d.p("fifo");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::fs::File::open(fifo)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    });
    let o = attn(&q, &["--out", &d.s("fifo")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bytes = reader.join().unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"), "{} bytes", bytes.len());
    assert!(std::fs::metadata(d.p("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(hidden(&d.0).is_empty(), "{:?}", d.names());
}

// 2. A failed run loses nothing that existed before.
#[test]
fn a_directory_target_fails_before_work_and_keeps_old_outputs() {
    let d = Dir::new("keep_old");
    let q = qkv(&d);
    std::fs::write(d.p("out.npy"), "old\n").unwrap();
    std::fs::create_dir(d.p("adir")).unwrap();
    let o = attn(&q, &["--out", &d.s("out.npy"), "--lse", &d.s("adir")]);
    fails_with(&o, &["--lse", "adir", "directory"]);
    assert_eq!(std::fs::read_to_string(d.p("out.npy")).unwrap(), "old\n");
    assert!(hidden(&d.0).is_empty(), "{:?}", d.names());
}

// 3. Outputs aliasing each other or an input are refused.
#[test]
fn aliased_outputs_and_inputs_are_refused() {
    let d = Dir::new("alias");
    let q = qkv(&d);
    let k_before = std::fs::read(d.p("k.npy")).unwrap();
    let same = format!("{}/./a.npy", d.0.display());
    let o = attn(&q, &["--out", &d.s("a.npy"), "--lse", &same]);
    fails_with(&o, &["--lse", "same file", "--out"]);
    std::os::unix::fs::symlink(&d.0, d.p("link")).unwrap();
    let via_link = format!("{}/a.npy", d.s("link"));
    let o = attn(&q, &["--out", &d.s("a.npy"), "--lse", &via_link]);
    fails_with(&o, &["--lse", "same file", "--out"]);
    let o = attn(&q, &["--out", &d.s("a.npy"), "--lse", &d.s("k.npy")]);
    fails_with(&o, &["--lse", "the input --key", "refusing to overwrite"]);
    std::fs::hard_link(d.p("k.npy"), d.p("k2.npy")).unwrap();
    let o = attn(&q, &["--out", &d.s("k2.npy")]);
    fails_with(&o, &["--out", "the input --key"]);
    assert_eq!(std::fs::read(d.p("k.npy")).unwrap(), k_before);
    assert!(!d.p("a.npy").exists());
    assert!(hidden(&d.0).is_empty(), "{:?}", d.names());
}

// 6. Standard output closed or full; bad --max-seconds.
#[test]
fn closed_stdout_ends_quietly_and_a_full_one_is_an_error() {
    let mut child = Command::new(bin())
        .args(["info", "nat_mini"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(bin())
        .args(["info", "nat_mini"])
        .stdout(full)
        .output()
        .unwrap();
    fails_with(&o, &["standard output", "No space left"]);

    for bad in ["NaN", "-1", "0", "inf"] {
        let o = na(&[
            "bench",
            "--shape",
            "1,8,1,4",
            "--kernel-size",
            "3",
            "--max-seconds",
            bad,
        ]);
        assert_ne!(o.status.code(), Some(101), "{bad}: {}", text(&o.stderr));
        assert!(!o.status.success(), "{bad}");
        assert!(
            text(&o.stderr).contains("--max-seconds"),
            "{bad}: {}",
            text(&o.stderr)
        );
    }
}

const TINY: &str = r#"{"arch": "dinat", "embed_dim": 8, "mlp_ratio": 2.0, "depths": [1, 1],
  "num_heads": [1, 2], "kernel_size": 3, "dilations": [[2], [1]], "num_classes": 10,
  "in_chans": 1, "stem_strides": [2, 2]}"#;

fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// A small IDX data set of `side`×`side` images in `dir`.
fn dataset(dir: &Path, n: usize, side: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let px: Vec<u8> = (0..n * side * side).map(|i| (i * 31 % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let s = side as u32;
    for (img, lbl) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        std::fs::write(dir.join(img), idx(&[n as u32, s, s], &px)).unwrap();
        std::fs::write(dir.join(lbl), idx(&[n as u32], &labels)).unwrap();
    }
}

fn train(data: &Path, cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--val-images",
        "16",
    ];
    args.extend_from_slice(extra);
    na(&args)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    total
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.metadata().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

// 7. Checkpoints are one set: a full disk mid-save keeps the previous one
// whole (and no temporary file), resume verifies the set, and resuming gives
// the model an uninterrupted run gives.
#[test]
fn checkpoints_survive_a_full_disk_and_damage_is_detected() {
    let d = Dir::new("checkpoint");
    let data = d.p("data");
    // 32 images to fit (two steps of 16 per epoch), 16 to validate.
    dataset(&data, 48, 28);
    let cfg = d.p("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();
    // The reference: two epochs without interruption.
    let whole = d.p("whole");
    let o = train(&data, &cfg, &whole, &["--epochs", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The size of one epoch's folder.
    let one = d.p("one");
    let o = train(&data, &cfg, &one, &["--epochs", "2", "--max-steps", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let epoch_bytes = dir_bytes(&one);
    let small_dir = Dir::new("checkpoint_small");
    let small = small_dir.0.clone();
    // Room for one checkpoint and a half: the second save runs out of space.
    if !mount_tmpfs(&small, epoch_bytes + epoch_bytes / 2 + 4096, false) {
        eprintln!("skipped the full-disk part: mounting a tmpfs needs root");
    } else {
        let run = small.join("run");
        let o = train(&data, &cfg, &run, &["--epochs", "2"]);
        fails_with(&o, &["No space left"]);
        assert!(hidden(&run).is_empty(), "{:?}", names(&run));
        let sets: Vec<String> = names(&run)
            .into_iter()
            .filter(|n| n.starts_with("checkpoint-s"))
            .collect();
        assert_eq!(sets, ["checkpoint-s0000002"], "{:?}", names(&run));
        // Resume on a disk with room: the same model as the whole run.
        let resumed = d.p("resumed");
        copy_dir(&run, &resumed);
        let o = train(&data, &cfg, &resumed, &["--epochs", "2", "--resume"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(
            std::fs::read(resumed.join("model.safetensors")).unwrap(),
            std::fs::read(whole.join("model.safetensors")).unwrap()
        );
    }
    // A damaged set is refused on resume, naming the file.
    let set = one
        .join("checkpoint-s0000002")
        .join("optimizer.safetensors");
    let mut bytes = std::fs::read(&set).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&set, bytes).unwrap();
    let o = train(&data, &cfg, &one, &["--epochs", "2", "--resume"]);
    fails_with(
        &o,
        &["optimizer.safetensors", "damaged checkpoint", "CRC-32"],
    );
}

/// Waits until `cond` holds (up to a minute).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn interrupt(child: &std::process::Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

// 7. SIGINT / SIGTERM mid-run leave no temporary file and no partial output.
#[test]
fn an_interrupt_leaves_no_temporary_files() {
    let d = Dir::new("sigint");
    // Large enough that the computation is still running when the signal comes.
    for n in ["q.npy", "k.npy", "v.npy"] {
        write_npy(&d.p(n), &[2, 96, 96, 4, 32]);
    }
    std::fs::write(d.p("out.npy"), "old\n").unwrap();
    let child = Command::new(bin())
        .args([
            "attn",
            "--kernel-size",
            "13",
            "--threads",
            "1",
            "--dtype",
            "bf16",
        ])
        .args(["--query", &d.s("q.npy"), "--key", &d.s("k.npy")])
        .args(["--value", &d.s("v.npy"), "--out", &d.s("out.npy")])
        .args(["--lse", &d.s("lse.npy")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The temporary files exist from the moment the outputs are planned.
    wait_for("the temporary files", || hidden(&d.0).len() == 2);
    interrupt(&child, "-INT");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert_eq!(
        d.names(),
        ["k.npy", "out.npy", "q.npy", "v.npy"],
        "no temporary, no partial output"
    );
    assert_eq!(std::fs::read_to_string(d.p("out.npy")).unwrap(), "old\n");

    // Training: SIGTERM between checkpoints leaves the last set whole.
    let data = d.p("data");
    dataset(&data, 64, 28);
    let cfg = d.p("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();
    let run = d.p("run");
    let child = Command::new(bin())
        .args([
            "train",
            "--epochs",
            "200",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--val-images",
            "16",
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .args(["--out", run.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("two checkpoints", || {
        std::fs::read_to_string(run.join("checkpoint.json"))
            .is_ok_and(|m| m.contains("\"epochs_done\": 2"))
    });
    interrupt(&child, "-TERM");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", text(&o.stderr));
    assert!(hidden(&run).is_empty(), "{:?}", names(&run));
    // The manifest names a complete set: resuming is accepted.
    let o = Command::new(bin())
        .args([
            "train",
            "--epochs",
            "200",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--val-images",
            "16",
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ])
        .args([
            "--out",
            run.to_str().unwrap(),
            "--resume",
            "--max-steps",
            "1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

// A read-only directory: refused before any work, nothing written.
#[test]
fn a_read_only_directory_is_refused_before_work() {
    let d = Dir::new("read_only");
    let q = qkv(&d);
    let ro_dir = Dir::new("read_only_mount");
    let ro = ro_dir.0.clone();
    if !mount_tmpfs(&ro, 1 << 20, true) {
        eprintln!("skipped: mounting a read-only tmpfs needs root");
        return;
    }
    let out = ro.join("out.npy");
    let o = attn(&q, &["--out", out.to_str().unwrap()]);
    fails_with(&o, &["--out", "Read-only file system"]);
    // Before any work: even before the inputs are read.
    let missing = [d.s("missing.npy"), q[1].clone(), q[2].clone()];
    let o = attn(&missing, &["--out", out.to_str().unwrap()]);
    fails_with(&o, &["--out", "Read-only file system"]);
    assert!(names(&ro).is_empty());
}

// 8. Silent wrong answers.
#[test]
fn wrong_answers_are_errors() {
    let d = Dir::new("wrong");
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fashion");
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../na-model/assets");
    let img = ex.join("0000_Ankle-boot.png");
    // NaN weights: no classification, not uniform 10% rows.
    let w = na_model::WeightMap::load(assets.join("fashion_dinat.safetensors")).unwrap();
    let mut nan = std::collections::BTreeMap::new();
    for name in w.names() {
        let mut t = w.get(name).unwrap().clone();
        t.data.iter_mut().for_each(|v| *v = f32::NAN);
        nan.insert(name.to_string(), t);
    }
    na_model::WeightMap::from_map(nan)
        .save_safetensors(d.p("nan.safetensors"))
        .unwrap();
    let cfg = assets.join("fashion_dinat.json");
    let o = na(&[
        "classify",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        &d.s("nan.safetensors"),
        img.to_str().unwrap(),
    ]);
    fails_with(&o, &["logit", "NaN"]);
    // --max-steps 0 is refused, not reported as written weights.
    let o = na(&["train", "--out", &d.s("run"), "--max-steps", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--max-steps"));
    assert!(!d.p("run").exists());
    // A model trained on 28x28 images is not run on 1x1 ones.
    dataset(&d.p("tiny_images"), 20, 1);
    let o = na(&["eval", "--data", &d.s("tiny_images")]);
    fails_with(&o, &["trained on 28x28", "1x1"]);
    // A repeated flag is an error, not a list.
    let o = na(&[
        "bench",
        "--shape",
        "1,8,8,1,4",
        "--kernel-size",
        "3",
        "--kernel-size",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("cannot be used multiple times"));
}

/// The CRC-32 of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG signature, IHDR, an IDAT of a few bytes (with a wrong CRC if
/// `bad_crc`) and IEND: no real pixel data.
fn png(width: u32, height: u32, depth: u8, colour: u8, bad_crc: bool) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8], crc_ok: bool| {
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        let crc = crc32(&body) ^ u32::from(!crc_ok);
        v.extend_from_slice(&body);
        v.extend_from_slice(&crc.to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    chunk(b"IHDR", &ihdr, true);
    chunk(b"IDAT", &[0x78, 0x9c, 1, 2, 3], !bad_crc);
    chunk(b"IEND", &[], true);
    v
}

// 9. Bounded memory and threads.
#[test]
fn limits_refuse_before_allocating() {
    let d = Dir::new("limits");
    let t0 = Instant::now();
    let o = na(&["classify", "/dev/zero"]);
    fails_with(&o, &["/dev/zero", "limit"]);
    assert!(t0.elapsed() < Duration::from_secs(30));
    // 9000x9000 RGBA16 (648 MB decoded): refused from its header.
    std::fs::write(d.p("big.png"), png(9000, 9000, 16, 6, false)).unwrap();
    let o = na(&["classify", &d.s("big.png")]);
    fails_with(&o, &["big.png", "9000x9000", "--max-image-mib"]);
    let o = na(&[
        "bench",
        "--shape",
        "1,65536,65536,1,8",
        "--kernel-size",
        "3",
    ]);
    fails_with(&o, &["memory", "limit", "NA_MAX_MEMORY_GIB"]);
    let o = na(&["info", "nat_mini", "--size", "64"]);
    assert!(o.status.success());
    for cmd in [
        &["attn"][..],
        &["classify", "x.png"],
        &["train", "--out", "x"],
    ] {
        let mut args = cmd.to_vec();
        args.extend_from_slice(&["--threads", "100000"]);
        let o = na(&args);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("100000 threads is more than"),
            "{}",
            text(&o.stderr)
        );
    }
}

// 10. Messages: one line, the flag named; help and README statements true.
#[test]
fn messages_are_one_line_and_the_documented_uses_work() {
    let d = Dir::new("messages");
    std::fs::write(d.p("fake.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let o = na(&["classify", &d.s("fake.jpg")]);
    fails_with(&o, &["fake.jpg"]);
    std::fs::write(d.p("crc.png"), png(4, 4, 8, 2, true)).unwrap();
    let o = na(&["classify", &d.s("crc.png")]);
    fails_with(&o, &["crc.png"]);
    let err = text(&o.stderr);
    let words: Vec<&str> = err.split(": ").collect();
    let mut seen = std::collections::HashSet::new();
    assert!(words.iter().all(|w| seen.insert(*w)), "repeated: {err}");
    // One kernel size for a 2-D shape, as the help says.
    let o = na(&[
        "bench",
        "--shape",
        "1,8,8,1,4",
        "--kernel-size",
        "3",
        "--warmup",
        "0",
        "--iters",
        "3",
        "--max-seconds",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // train --out naming a file: refused before training, file untouched.
    std::fs::write(d.p("file"), "keep").unwrap();
    let o = na(&["train", "--out", &d.s("file")]);
    fails_with(&o, &["--out", "not a directory"]);
    assert_eq!(std::fs::read_to_string(d.p("file")).unwrap(), "keep");
    // The README: a trained model.safetensors loads in classify --config,
    // and gives what the built-in model gives.
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fashion");
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../na-model/assets");
    let img = ex.join("0000_Ankle-boot.png");
    let img = img.to_str().unwrap();
    let cfg = assets.join("fashion_dinat.json");
    let w = assets.join("fashion_dinat.safetensors");
    let a = na(&[
        "classify",
        "--config",
        cfg.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        img,
    ]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = na(&["classify", img]);
    assert_eq!(text(&a.stdout), text(&b.stdout));
    assert!(
        text(&a.stdout).contains("Ankle boot"),
        "{}",
        text(&a.stdout)
    );
}
