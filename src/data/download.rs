//! Fetching CIFAR-10: download, verify, extract, and only then move into place.
//!
//! Everything is staged under temporary names inside `<data>` (so that the final rename stays on
//! one file system and is atomic): `<data>/cifar-10-batches-bin` either does not exist or is
//! complete. The temporaries are removed on every error path; ones left by a killed process are
//! swept away by the next download.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use super::cifar10::{self, ALL_FILES, DIR_NAME};

/// Where the official binary archive lives.
pub const DEFAULT_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 of the official archive, as published with it.
pub const ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The size of the official archive.
pub const ARCHIVE_BYTES: u64 = 170_052_171;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read may wait for bytes; a slow but live download is never cut off.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A bound on what a wrong URL can make maas write to disk; the real archive is 170 MB.
const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
const _: () = assert!(ARCHIVE_BYTES < MAX_ARCHIVE_BYTES);
/// The same bound per extracted file; the real ones are 30.7 MB.
const MAX_MEMBER_BYTES: u64 = 256 << 20;
/// Names every temporary this module makes, so that leftovers can be recognised.
const TEMP_PREFIX: &str = ".maas-cifar10-";
/// Temporaries untouched for this long belong to a process that died; a live download writes
/// (and so touches its file) at least every `READ_TIMEOUT`.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// How to fetch the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Where to fetch it from (`http://` or `https://`).
    pub url: String,
    /// The expected MD5, 32 hex digits (either case). An empty string skips the check, for
    /// mirrors and tests that serve a different archive.
    pub md5: String,
    /// Show a byte progress bar on stderr (also when stderr is not a terminal: the caller
    /// decides). Ignored when `quiet`.
    pub progress: bool,
    /// Print nothing but errors.
    pub quiet: bool,
}

impl Default for DownloadOptions {
    /// The official archive and checksum, plain start and finish lines.
    fn default() -> Self {
        DownloadOptions {
            url: DEFAULT_URL.to_owned(),
            md5: ARCHIVE_MD5.to_owned(),
            progress: false,
            quiet: false,
        }
    }
}

/// Returns `<data>/cifar-10-batches-bin`, downloading and installing it first when it is missing.
///
/// An existing folder is returned as it is (loading checks it). Otherwise the archive is
/// downloaded into a temporary file in `<data>` (created if needed), its MD5 checked, the seven
/// expected files extracted into a temporary folder and checked with [`cifar10::validate_dir`],
/// and only then renamed into place. On any error nothing of it is left in `<data>`.
pub fn ensure_cifar10(data: &Path, opts: &DownloadOptions) -> Result<PathBuf> {
    let target = data.join(DIR_NAME);
    if target.exists() {
        return Ok(target);
    }
    let url = opts.url.as_str();
    let expected_md5 = parse_md5(&opts.md5)?;
    fs::create_dir_all(data)
        .with_context(|| format!("{}: cannot create the data folder", data.display()))?;
    remove_stale_temporaries(data);
    if !opts.quiet {
        eprintln!("downloading CIFAR-10 from {url} into {}", data.display());
    }
    let started = Instant::now();

    let mut archive = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tar.gz")
        .tempfile_in(data)
        .with_context(|| {
            format!(
                "{}: cannot create a temporary file for the download",
                data.display()
            )
        })?;
    let archive_path = archive.path().to_path_buf();
    let (size, digest) = fetch(
        url,
        archive.as_file_mut(),
        &archive_path,
        opts.progress && !opts.quiet,
    )?;
    if let Some(expected) = expected_md5
        && digest != expected
    {
        bail!(
            "{url}: MD5 mismatch: expected {expected}, got {digest} ({size} bytes downloaded); \
             the download is damaged or this is not the CIFAR-10 binary archive"
        );
    }

    let staging = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(data)
        .with_context(|| {
            format!(
                "{}: cannot create a temporary folder to extract into",
                data.display()
            )
        })?;
    let file = archive.as_file_mut();
    file.seek(SeekFrom::Start(0))
        .with_context(|| archive_path.display().to_string())?;
    extract(url, file, staging.path())?;
    let extracted = staging.path().join(DIR_NAME);
    cifar10::validate_dir(&extracted).map_err(|e| {
        // The staging path is meaningless to users; the member's name inside the archive is not.
        let prefix = format!("{}{}", staging.path().display(), std::path::MAIN_SEPARATOR);
        anyhow!(
            "{url}: archive member {}",
            format!("{e:#}").replace(&prefix, "")
        )
    })?;

    if let Err(e) = fs::rename(&extracted, &target) {
        // Another maas that downloaded at the same time may have won the race; its copy is as good.
        if !target.is_dir() {
            return Err(e).with_context(|| {
                format!(
                    "{}: cannot move the extracted data into place",
                    target.display()
                )
            });
        }
    }
    drop(archive);
    drop(staging);
    if !opts.quiet {
        eprintln!(
            "installed CIFAR-10 in {} ({:.1} MB in {:.1} s)",
            target.display(),
            size as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(target)
}

/// The expected digest in lower case, or `None` when the check is switched off.
fn parse_md5(md5: &str) -> Result<Option<String>> {
    let md5 = md5.trim();
    if md5.is_empty() {
        return Ok(None);
    }
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{md5:?} is not an MD5 digest (32 hex digits)");
    }
    Ok(Some(md5.to_ascii_lowercase()))
}

/// Streams `url` into `out`, returning the byte count and the MD5 in lower-case hex.
fn fetch(url: &str, out: &mut File, out_path: &Path, progress: bool) -> Result<(u64, String)> {
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .user_agent(concat!("maas/", env!("CARGO_PKG_VERSION")))
        // Straight to the URL, as maas always did: ureq 3 would otherwise take a proxy from
        // ALL_PROXY/HTTPS_PROXY/HTTP_PROXY.
        .proxy(None)
        // A 4xx/5xx is a response like any other; it is reported below with its code.
        .http_status_as_error(false)
        .build()
        .new_agent();
    // The archive as it is: a server that compressed it again would hand back something whose
    // MD5 is not the published one.
    let response = agent
        .get(url)
        .header("Accept-Encoding", "identity")
        .call()
        .with_context(|| format!("{url}: download failed"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "{url}: the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        );
    }
    let expected_len = response
        .headers()
        .get("Content-Length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(len) = expected_len
        && len > MAX_ARCHIVE_BYTES
    {
        bail!(
            "{url}: the server announces {len} bytes, more than maas accepts (the CIFAR-10 \
             archive is {ARCHIVE_BYTES})"
        );
    }

    let bar = progress.then(|| byte_bar(expected_len));
    let mut hasher = Md5::new();
    let mut reader = response
        .into_body()
        .into_reader()
        .take(MAX_ARCHIVE_BYTES + 1);
    let result = copy(&mut reader, out, |chunk| {
        hasher.update(chunk);
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let size = match result {
        Ok(size) => size,
        Err(CopyError::Read(e, done)) => {
            return Err(e)
                .with_context(|| format!("{url}: download interrupted after {done} bytes"));
        }
        Err(CopyError::Write(e)) => {
            return Err(e)
                .with_context(|| format!("{}: cannot write the download", out_path.display()));
        }
    };
    if size > MAX_ARCHIVE_BYTES {
        bail!(
            "{url}: more than {MAX_ARCHIVE_BYTES} bytes; the CIFAR-10 archive is {ARCHIVE_BYTES}"
        );
    }
    if let Some(len) = expected_len
        && size != len
    {
        bail!("{url}: download ended after {size} of {len} bytes");
    }
    out.sync_all()
        .with_context(|| format!("{}: cannot write the download", out_path.display()))?;
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, digest))
}

/// Extracts the seven expected members of the `.tar.gz` in `archive` into
/// `<dest>/cifar-10-batches-bin/`. Everything else is read past and dropped: only names from
/// [`ALL_FILES`] are ever written, so no member path can reach outside `dest`.
fn extract(url: &str, archive: &mut File, dest: &Path) -> Result<()> {
    let damaged = |e: io::Error| {
        anyhow::Error::new(e).context(format!(
            "{url}: the archive is damaged (not a complete .tar.gz)"
        ))
    };
    let dir = dest.join(DIR_NAME);
    fs::create_dir(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;

    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(archive)));
    let mut found = [false; ALL_FILES.len()];
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let member = entry.path().map_err(damaged)?.into_owned();
        let Some(index) = expected_member(&member) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            bail!(
                "{url}: archive member {} is not a regular file",
                member.display()
            );
        }
        let path = dir.join(ALL_FILES[index]);
        let mut out =
            File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        let size = match copy(
            &mut (&mut entry).take(MAX_MEMBER_BYTES + 1),
            &mut out,
            |_| {},
        ) {
            Ok(size) => size,
            Err(CopyError::Read(e, _)) => return Err(damaged(e)),
            Err(CopyError::Write(e)) => {
                return Err(e).with_context(|| format!("{}: cannot write", path.display()));
            }
        };
        if size > MAX_MEMBER_BYTES {
            bail!(
                "{url}: archive member {} is larger than {MAX_MEMBER_BYTES} bytes",
                member.display()
            );
        }
        out.sync_all()
            .with_context(|| format!("{}: cannot write", path.display()))?;
        found[index] = true;
    }
    // The gzip checksum sits after the tar's end marker; reading to the end is what checks it.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(damaged)?;

    let missing: Vec<String> = ALL_FILES
        .iter()
        .zip(found)
        .filter(|&(_, found)| !found)
        .map(|(name, _)| format!("{DIR_NAME}/{name}"))
        .collect();
    if missing.len() == ALL_FILES.len() {
        bail!(
            "{url}: the archive holds none of the {DIR_NAME}/ files; is it the binary version of \
             CIFAR-10 (cifar-10-binary.tar.gz)?"
        );
    }
    if !missing.is_empty() {
        bail!("{url}: the archive lacks {}", missing.join(", "));
    }
    Ok(())
}

/// The index in [`ALL_FILES`] of a member named `cifar-10-batches-bin/<one of them>` (a leading
/// `./` allowed); `None` for anything else, including absolute paths and `..`.
fn expected_member(path: &Path) -> Option<usize> {
    let mut parts = path.components().filter(|c| *c != Component::CurDir);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Component::Normal(top)), Some(Component::Normal(name)), None) if top == DIR_NAME => {
            ALL_FILES.iter().position(|expected| name == *expected)
        }
        _ => None,
    }
}

enum CopyError {
    /// Reading failed after this many bytes had been copied.
    Read(io::Error, u64),
    Write(io::Error),
}

/// `io::copy`, but telling read errors (network, damaged archive) from write errors (disk), and
/// showing each chunk to `inspect` before it is written.
fn copy(
    reader: &mut impl Read,
    writer: &mut impl Write,
    mut inspect: impl FnMut(&[u8]),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e, total)),
        };
        let chunk = &buf[..n];
        inspect(chunk);
        writer.write_all(chunk).map_err(CopyError::Write)?;
        total += n as u64;
    }
    writer.flush().map_err(CopyError::Write)?;
    Ok(total)
}

/// Best effort: temporaries of a download that was killed (Ctrl-C skips destructors) would
/// otherwise pile up, 170 MB each.
fn remove_stale_temporaries(data: &Path) {
    let Ok(entries) = fs::read_dir(data) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let stale = meta
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let path = entry.path();
            let _ = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn byte_bar(total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::with_draw_target(Some(total), crate::progress::stderr_target()),
            "downloading [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, crate::progress::stderr_target()),
            "downloading {spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar10::{Split, TEST_FILE};
    use crate::data::synthetic;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// Serves `responses` (status, body) to the next requests on 127.0.0.1, one each, then stops.
    /// The handle yields how many requests arrived.
    fn serve(responses: Vec<(u16, Vec<u8>)>) -> (String, JoinHandle<usize>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for (status, body) in responses {
                let Ok(Some(request)) = server.recv_timeout(Duration::from_secs(20)) else {
                    break;
                };
                let response = tiny_http::Response::from_data(body).with_status_code(status);
                let _ = request.respond(response);
                served += 1;
            }
            served
        });
        (
            format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz"),
            handle,
        )
    }

    fn md5_hex(bytes: &[u8]) -> String {
        Md5::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn options(url: &str, md5: &str) -> DownloadOptions {
        DownloadOptions {
            url: url.to_owned(),
            md5: md5.to_owned(),
            progress: false,
            quiet: true,
        }
    }

    fn tiny_targz() -> Vec<u8> {
        let src = tempfile::tempdir().unwrap();
        synthetic::write_cifar10_dir(src.path(), 20, 20, 5).unwrap();
        fs::write(src.path().join("readme.html"), "<p>hi</p>").unwrap();
        synthetic::cifar10_targz(src.path()).unwrap()
    }

    /// The members of a tiny valid folder, as (archive path, bytes), for building broken archives.
    fn tiny_members() -> Vec<(String, Vec<u8>)> {
        let src = tempfile::tempdir().unwrap();
        synthetic::write_cifar10_dir(src.path(), 20, 20, 5).unwrap();
        ALL_FILES
            .iter()
            .map(|name| {
                (
                    format!("{DIR_NAME}/{name}"),
                    fs::read(src.path().join(name)).unwrap(),
                )
            })
            .collect()
    }

    fn pack(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(&str, &[u8])> = members
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        synthetic::targz(&refs).unwrap()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Serves `body` once with the given MD5 option and returns the error message, checking that
    /// `<data>` is left empty.
    fn failed_download(status: u16, body: Vec<u8>, md5: &str) -> (String, String) {
        let data = tempfile::tempdir().unwrap();
        let (url, server) = serve(vec![(status, body)]);
        let err = ensure_cifar10(data.path(), &options(&url, md5)).unwrap_err();
        assert_eq!(server.join().unwrap(), 1);
        assert!(
            listing(data.path()).is_empty(),
            "left behind: {:?}",
            listing(data.path())
        );
        (format!("{err:#}"), url)
    }

    #[test]
    fn downloads_verifies_and_installs() {
        let gz = tiny_targz();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("nested").join("data");
        let (url, server) = serve(vec![(200, gz.clone())]);
        let dir = ensure_cifar10(&data, &options(&url, &md5_hex(&gz).to_uppercase())).unwrap();
        assert_eq!(server.join().unwrap(), 1);
        assert_eq!(dir, data.join(DIR_NAME));
        assert_eq!(listing(&data), vec![DIR_NAME.to_owned()]);
        let mut expected: Vec<String> = ALL_FILES.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(listing(&dir), expected, "readme.html is not extracted");
        assert_eq!(
            cifar10::load_split(&dir, Split::Train, None).unwrap().len(),
            100
        );
        assert_eq!(cifar10::read_class_names(&dir).unwrap()[0], "airplane");

        // Present now, so no request is made (this URL has nobody listening).
        let dead = options("http://127.0.0.1:9/none", ARCHIVE_MD5);
        assert_eq!(ensure_cifar10(&data, &dead).unwrap(), dir);
    }

    #[test]
    fn progress_bar_and_unchecked_md5() {
        let gz = tiny_targz();
        let data = tempfile::tempdir().unwrap();
        let (url, server) = serve(vec![(200, gz)]);
        let opts = DownloadOptions {
            url,
            md5: String::new(),
            progress: true,
            quiet: false,
        };
        ensure_cifar10(data.path(), &opts).unwrap();
        assert_eq!(server.join().unwrap(), 1);
        assert_eq!(listing(data.path()), vec![DIR_NAME.to_owned()]);
    }

    #[test]
    fn wrong_md5_leaves_nothing() {
        let gz = tiny_targz();
        let actual = md5_hex(&gz);
        let (msg, url) = failed_download(200, gz, ARCHIVE_MD5);
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains("MD5 mismatch"), "{msg}");
        assert!(msg.contains(ARCHIVE_MD5), "{msg}");
        assert!(msg.contains(&actual), "{msg}");
    }

    #[test]
    fn http_errors_report_the_code() {
        let (msg, url) = failed_download(404, b"no such file".to_vec(), ARCHIVE_MD5);
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains("HTTP 404"), "{msg}");
        let (msg, _) = failed_download(503, Vec::new(), "");
        assert!(msg.contains("HTTP 503"), "{msg}");
    }

    #[test]
    fn connection_refused_names_the_url() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let data = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}/x.tar.gz");
        let msg = format!(
            "{:#}",
            ensure_cifar10(data.path(), &options(&url, "")).unwrap_err()
        );
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains("download failed"), "{msg}");
        assert!(listing(data.path()).is_empty());
    }

    #[test]
    fn connection_closed_early_fails_cleanly() {
        let gz = tiny_targz();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                gz.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&gz[..gz.len() / 2]).unwrap();
        });
        let data = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}/x.tar.gz");
        let err = ensure_cifar10(data.path(), &options(&url, "")).unwrap_err();
        server.join().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains(&url), "{msg}");
        assert!(
            msg.contains("interrupted") || msg.contains("ended after"),
            "{msg}"
        );
        assert!(listing(data.path()).is_empty());
    }

    #[test]
    fn truncated_or_foreign_archives_fail_cleanly() {
        let gz = tiny_targz();
        // A truncated file served whole, with its own (matching) MD5.
        let cut = gz[..gz.len() - 500].to_vec();
        let md5 = md5_hex(&cut);
        let (msg, url) = failed_download(200, cut, &md5);
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains("damaged"), "{msg}");

        // Only the gzip trailer missing: every member is whole, yet the archive is incomplete.
        let (msg, _) = failed_download(200, gz[..gz.len() - 4].to_vec(), "");
        assert!(msg.contains("damaged"), "{msg}");

        let (msg, _) = failed_download(200, b"<html>mirror page</html>".to_vec(), "");
        assert!(msg.contains("damaged"), "{msg}");
    }

    #[test]
    fn wrong_size_member_fails_validation_and_leaves_nothing() {
        let mut members = tiny_members();
        members[2].1.truncate(3000);
        let (msg, url) = failed_download(200, pack(&members), "");
        assert!(msg.contains(&url), "{msg}");
        assert!(
            msg.contains(&format!(
                "{DIR_NAME}/data_batch_3.bin: size 3000 is not a multiple of the 3073-byte record"
            )),
            "{msg}"
        );
        assert!(!msg.contains(TEMP_PREFIX), "{msg}");
    }

    #[test]
    fn missing_member_or_bad_meta_fails() {
        let members: Vec<_> = tiny_members()
            .into_iter()
            .filter(|(n, _)| !n.ends_with(TEST_FILE))
            .collect();
        let (msg, _) = failed_download(200, pack(&members), "");
        assert!(
            msg.contains(&format!("lacks {DIR_NAME}/{TEST_FILE}")),
            "{msg}"
        );

        let mut members = tiny_members();
        members[6].1 = b"cat\ndog\nbird\n".to_vec();
        let (msg, _) = failed_download(200, pack(&members), "");
        assert!(msg.contains("expected 10 class names, found 3"), "{msg}");

        // Members at the wrong depth are not the expected ones.
        let members: Vec<_> = tiny_members()
            .into_iter()
            .map(|(n, b)| (format!("top/{n}"), b))
            .collect();
        let (msg, _) = failed_download(200, pack(&members), "");
        assert!(msg.contains("holds none of the"), "{msg}");
    }

    #[test]
    fn unsafe_and_unexpected_members_are_never_written() {
        // tar::Builder refuses `..` and absolute names, so these headers are written by hand.
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let evil: &[(&[u8], &[u8])] = &[
            (b"../evil.bin", b"x"),
            (b"/tmp/maas-evil-absolute.bin", b"x"),
            (b"cifar-10-batches-bin/../../evil2.bin", b"x"),
            (b"cifar-10-batches-bin/extra.bin", b"x"),
        ];
        for (name, body) in evil {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append(&header, *body).unwrap();
        }
        for (name, body) in tiny_members() {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, format!("./{name}"), &body[..])
                .unwrap();
        }
        let gz = tar.into_inner().unwrap().finish().unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (url, server) = serve(vec![(200, gz)]);
        let dir = ensure_cifar10(&data, &options(&url, "")).unwrap();
        server.join().unwrap();
        assert_eq!(listing(tmp.path()), vec!["data".to_owned()]);
        assert_eq!(listing(&data), vec![DIR_NAME.to_owned()]);
        assert_eq!(listing(&dir).len(), ALL_FILES.len());
        assert!(!Path::new("/tmp/maas-evil-absolute.bin").exists());
    }

    #[test]
    fn member_names() {
        assert_eq!(
            expected_member(Path::new("cifar-10-batches-bin/data_batch_1.bin")),
            Some(0)
        );
        assert_eq!(
            expected_member(Path::new("./cifar-10-batches-bin/batches.meta.txt")),
            Some(6)
        );
        for other in [
            "cifar-10-batches-bin/",
            "cifar-10-batches-bin/readme.html",
            "data_batch_1.bin",
            "/cifar-10-batches-bin/data_batch_1.bin",
            "x/cifar-10-batches-bin/data_batch_1.bin",
            "cifar-10-batches-bin/../data_batch_1.bin",
            "cifar-10-batches-bin/sub/data_batch_1.bin",
        ] {
            assert_eq!(expected_member(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn bad_md5_option_fails_before_any_request() {
        let data = tempfile::tempdir().unwrap();
        let err = ensure_cifar10(
            &data.path().join("d"),
            &options("http://127.0.0.1:9/none", "abc"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an MD5 digest"), "{err}");
        assert!(listing(data.path()).is_empty());
        assert_eq!(
            parse_md5(ARCHIVE_MD5).unwrap().as_deref(),
            Some(ARCHIVE_MD5)
        );
        assert_eq!(parse_md5(" ").unwrap(), None);
    }

    #[test]
    fn stale_temporaries_are_swept_fresh_ones_kept() {
        let data = tempfile::tempdir().unwrap();
        let old = data.path().join(format!("{TEMP_PREFIX}old.tar.gz"));
        let fresh = data.path().join(format!("{TEMP_PREFIX}fresh.tar.gz"));
        let mine = data.path().join("notes.txt");
        for path in [&old, &fresh, &mine] {
            fs::write(path, b"x").unwrap();
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        File::options()
            .write(true)
            .open(&mine)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        remove_stale_temporaries(data.path());
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(mine.exists());
    }

    #[test]
    fn official_constants_agree() {
        assert_eq!(
            parse_md5(ARCHIVE_MD5).unwrap().as_deref(),
            Some(ARCHIVE_MD5)
        );
        assert_eq!(DownloadOptions::default().url, DEFAULT_URL);
        assert_eq!(DownloadOptions::default().md5, ARCHIVE_MD5);
    }
}
