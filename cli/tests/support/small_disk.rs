//! A small ext4 filesystem, private to the test, for the data directory: an image file on a
//! loop device, mounted in a mount namespace of its own (`unshare --mount`) that a holder
//! process keeps alive; the server runs inside it (`nsenter`). Nothing is mounted where the
//! rest of the machine can see it, and the namespace (and with it the mount and the loop
//! device, `autoclear`) goes when the holder is killed.
//!
//! ext4 rather than tmpfs because the read-only case must happen under a running server:
//! Linux refuses `remount,ro` while files are open for writing (`EBUSY`), but ext4's
//! `trigger_fs_error` makes the filesystem go read-only the way a disk error does
//! (`errors=remount-ro`): every later write fails, open files included.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct SmallDisk {
    holder: Child,
    image: PathBuf,
    /// The mount point (as seen inside the namespace; outside it is an empty directory).
    pub mount: PathBuf,
    /// `loopN`, the name under `/sys/fs/ext4/`.
    device: String,
}

fn run_checked(c: &mut Command, what: &str) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const MOUNT_OPTIONS: &str = "loop,errors=remount-ro";

impl SmallDisk {
    /// An `mib` MiB ext4 filesystem (no blocks reserved for root) mounted at `<dir>/disk`.
    pub fn new(dir: &Path, mib: u32) -> SmallDisk {
        let image = dir.join("disk.img");
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).expect("mount point");
        let f = std::fs::File::create(&image).expect("image");
        f.set_len(u64::from(mib) << 20).expect("image size");
        run_checked(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
            "mkfs.ext4",
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -o \"$3\" \"$1\" \"$2\" && findmnt -no SOURCE \"$2\" && exec sleep infinity",
            )
            .arg("sh")
            .arg(&image)
            .arg(&mount)
            .arg(MOUNT_OPTIONS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        // The first line comes once the mount is there; end of file if it failed.
        let stdout = holder.stdout.take().expect("holder stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read holder");
        if line.trim().is_empty() {
            let out = holder.wait_with_output().expect("holder exit");
            panic!(
                "could not mount a small ext4 filesystem in a private mount namespace \
                 (needs root or CAP_SYS_ADMIN and a loop device): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let device = device_name(&line);
        SmallDisk {
            holder,
            image,
            mount,
            device,
        }
    }

    /// The command that runs a program inside the namespace (a [`super::Server`] launcher).
    pub fn launcher(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .map(String::from)
            .to_vec()
    }

    /// Runs `script` (sh) inside the namespace with `$1` = the mount point, `$2` = the image.
    pub fn sh(&self, script: &str) -> Output {
        let launcher = self.launcher();
        Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["sh", "-c", script, "sh"])
            .arg(&self.mount)
            .arg(&self.image)
            .output()
            .expect("nsenter")
    }

    fn sh_checked(&self, script: &str) -> Output {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Free bytes as `df` counts them.
    pub fn available(&self) -> u64 {
        let out = self.sh_checked("df -B1 --output=avail \"$1\" | tail -n 1");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("df avail")
    }

    /// Writes zeros to `<mount>/filler` until the filesystem has no block left.
    pub fn fill(&self) {
        // dd stops at ENOSPC (its non-zero exit is the point); sync makes ext4 account for the
        // delayed allocations, then a second pass takes what that freed.
        self.sh("dd if=/dev/zero of=\"$1/filler\" bs=4k 2>/dev/null; sync; \
                 dd if=/dev/zero of=\"$1/filler2\" bs=1k 2>/dev/null; sync");
        assert_eq!(self.available(), 0, "the filesystem is not full");
    }

    /// Gives the space back.
    pub fn free(&self) {
        self.sh_checked("rm -f \"$1/filler\" \"$1/filler2\" && sync");
        assert!(self.available() > 1 << 20, "space did not come back");
    }

    /// Makes the filesystem fail the way a disk error does: ext4 remounts it read-only under
    /// the running processes.
    pub fn fail_read_only(&self) {
        let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device);
        std::fs::write(&trigger, "1").unwrap_or_else(|e| panic!("{trigger}: {e}"));
        let out = self.sh_checked("findmnt -no OPTIONS \"$1\"");
        let options = String::from_utf8_lossy(&out.stdout);
        assert!(
            options.split(',').any(|o| o == "ro" || o == "emergency_ro")
                || options.contains("emergency_ro"),
            "not read-only after the error: {options}"
        );
    }

    /// What an operator does after a disk error (with the server stopped): unmount, `e2fsck`,
    /// mount again.
    pub fn repair(&mut self) {
        let script = format!(
            "umount \"$1\" && {{ e2fsck -fy \"$2\" >/dev/null; [ $? -le 1 ]; }} \
             && mount -o {MOUNT_OPTIONS} \"$2\" \"$1\" && findmnt -no SOURCE \"$1\""
        );
        let out = self.sh_checked(&script);
        self.device = device_name(&String::from_utf8_lossy(&out.stdout));
    }
}

fn device_name(findmnt_source: &str) -> String {
    findmnt_source
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
