//! The contact sheet as a person reads it: `farmctl fetch` from a real
//! coordinator, the PNG and the PDF's pages read back by an OCR engine
//! (tesseract, from Debian's packages; `pdftoppm` from poppler-utils
//! turns the PDF into pictures). The jobs are finished by a "worker" that
//! copies a picture into its folder, so the sheet holds every state a
//! collection can show: images, a failure with its reason, a cancelled
//! job and a queued one.
//!
//! `STYLEFARM_SHEET_OUT=DIR` keeps the fetched sheet (PNG and PDF).

use std::path::Path;
use std::process::Command;

use stylefarm_tests::scripted::ScriptedWorker;
use stylefarm_tests::*;

/// What tesseract reads in `png`, lower-cased, its lines joined.
fn ocr(png: &Path) -> String {
    let o = Command::new("tesseract")
        .arg(png)
        .arg("stdout")
        // Sparse text: labels scattered over a grid, in no reading order.
        .args(["--psm", "11"])
        .output()
        .expect("tesseract is not installed: `apt-get install tesseract-ocr` (scripts/test.sh does)");
    assert!(o.status.success(), "tesseract failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_lowercase()
}

#[test]
fn a_fetched_contact_sheet_reads_back_its_labels_and_states() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::Ocr);
    let farm = Farm::start();
    let inputs = farm.dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (harbour, meadow) = (named_fixture(&inputs, "harbour", "content.png"), named_fixture(&inputs, "meadow", "init.png"));
    let (starry, waves) = (named_fixture(&inputs, "starry", "style.png"), named_fixture(&inputs, "waves", "content.png"));
    // 2 photos × 2 paintings × 2 variants that differ in alpha only.
    let id = farm.submit(&[
        "--name", "Autumn prints", "--content", &harbour, "--content", &meadow, "--style", &starry, "--style", &waves,
        "--size", "32x24", "--iters", "3", "--variant", "alpha=0.5", "--variant", "alpha=0.25",
    ]);
    let jobs: Vec<String> = jobs(&farm.status(&id).unwrap()).iter().map(|j| j["job_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(jobs.len(), 8);

    // Five succeed, one fails with a
    // reason, one is cancelled, one stays queued.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut w = ScriptedWorker::register(&farm.url, None, &farm.dir.path().join("data/storage"), "copier").await;
        // Their "render": a blank picture. What is read back is the labels,
        // and a picture beside a label sends tesseract's page layout
        // astray (it skipped "harbour" beside the fixture photo, and both
        // row labels beside grey squares).
        let mut photo = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(64, 48, image::Rgb([255, 255, 255])).write_to(&mut photo, image::ImageFormat::Png).unwrap();
        let photo = photo.into_inner();
        for _ in 0..5 {
            let job = w.lease().await;
            w.complete(job, &photo).await;
        }
        let job = w.lease().await;
        w.fail(job, "the photo could not be decoded").await;
    });
    let o = farm.farmctl(&["cancel", "--job", &jobs[6]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = farm.dir.path().join("fetched");
    let o = farm.farmctl(&["fetch", &id, "-o", &out.to_string_lossy()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    if let Ok(keep) = std::env::var("STYLEFARM_SHEET_OUT") {
        std::fs::create_dir_all(&keep).unwrap();
        for name in ["contact_sheet.png", "contact_sheet.pdf"] {
            std::fs::copy(out.join(name), std::path::Path::new(&keep).join(name)).unwrap();
        }
    }
    let expected = ["autumn prints", "harbour", "meadow", "starry", "waves", "alpha=0.5", "alpha=0.25", "failed", "decoded", "cancelled", "queued", "2 photos"];
    let read = ocr(&out.join("contact_sheet.png"));
    let missing: Vec<&str> = expected.iter().copied().filter(|w| !read.contains(w)).collect();
    assert!(missing.is_empty(), "the PNG sheet does not read {missing:?}; tesseract read:\n{read}");
    // Cells are as large as the images: the sheet is far smaller than
    // eight 192-px squares were.
    let sheet = image::open(out.join("contact_sheet.png")).unwrap();
    assert!(sheet.height() < 2 * 192 + 150, "{}×{}", sheet.width(), sheet.height());

    // The PDF: one page here, the same labels on it.
    let pages = farm.dir.path().join("page");
    let o = Command::new("pdftoppm")
        .args(["-r", "300", "-png"])
        .arg(out.join("contact_sheet.pdf"))
        .arg(&pages)
        .output()
        .expect("pdftoppm is not installed: `apt-get install poppler-utils` (scripts/test.sh does)");
    assert!(o.status.success(), "pdftoppm: {}", String::from_utf8_lossy(&o.stderr));
    let page = farm.dir.path().join("page-1.png");
    assert!(page.is_file() && !farm.dir.path().join("page-2.png").exists(), "one page");
    let read = ocr(&page);
    let missing: Vec<&str> = expected.iter().copied().filter(|w| !read.contains(w)).collect();
    assert!(missing.is_empty(), "the PDF page does not read {missing:?}; tesseract read:\n{read}");
}
