//! A fresh directory for a test's files (databases, scripts), removed when the test ends.

use std::path::{Path, PathBuf};

pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(purpose: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("mini-lambda-{purpose}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a test directory");
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
