// FileWatch sees the ways certificate tools replace files (rename over,
// symlink swap, write in place) and ignores other files in the directory.
#include "ktlb/file_watch.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace ktlb {
namespace {

namespace fs = std::filesystem;

class FileWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ktlb-file-watch-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }
  // Waits briefly for events (they are queued by the kernel at once) and
  // takes them.
  bool Changed(FileWatch& w) {
    pollfd p{w.fd(), POLLIN, 0};
    poll(&p, 1, 100);
    return w.TakeChanges();
  }

  std::string dir_;
};

TEST_F(FileWatchTest, RenameOverAWatchedFileIsAChange) {
  Write(Path("site.crt"), "old");
  FileWatch w;
  ASSERT_TRUE(w.Watch({Path("site.crt")}).ok());
  EXPECT_FALSE(Changed(w));
  Write(Path(".site.crt.tmp"), "new");
  EXPECT_FALSE(Changed(w));  // a temp file being written is not the watched name
  fs::rename(Path(".site.crt.tmp"), Path("site.crt"));
  EXPECT_TRUE(Changed(w));
  EXPECT_FALSE(Changed(w));  // taken
}

TEST_F(FileWatchTest, WriteInPlaceIsAChangeOnceClosed) {
  Write(Path("ktlb.toml"), "a = 1\n");
  FileWatch w;
  ASSERT_TRUE(w.Watch({Path("ktlb.toml")}).ok());
  Write(Path("ktlb.toml"), "a = 2\n");
  EXPECT_TRUE(Changed(w));
}

TEST_F(FileWatchTest, OtherFilesInTheDirectoryAreIgnored) {
  Write(Path("ktlb.toml"), "");
  FileWatch w;
  ASSERT_TRUE(w.Watch({Path("ktlb.toml")}).ok());
  // An access log next to the config must not cause reloads.
  for (int i = 0; i < 3; ++i) {
    std::ofstream(Path("access.log"), std::ios::app) << "line\n";
  }
  EXPECT_FALSE(Changed(w));
}

TEST_F(FileWatchTest, SymlinkSwapOfAMountedSecretIsAChange) {
  // Kubernetes: tls.crt -> ..data/tls.crt, ..data -> ..v1; an update makes
  // ..v2 and renames a new ..data link over the old one.
  fs::create_directory(Path("..v1"));
  Write(Path("..v1/tls.crt"), "v1");
  fs::create_directory_symlink("..v1", Path("..data"));
  fs::create_symlink("..data/tls.crt", Path("tls.crt"));
  FileWatch w;
  ASSERT_TRUE(w.Watch({Path("tls.crt")}).ok());
  fs::create_directory(Path("..v2"));
  Write(Path("..v2/tls.crt"), "v2");
  EXPECT_FALSE(Changed(w));  // the new version is not live yet
  fs::create_directory_symlink("..v2", Path("..data_tmp"));
  fs::rename(Path("..data_tmp"), Path("..data"));
  EXPECT_TRUE(Changed(w));
}

TEST_F(FileWatchTest, AMissingDirectoryIsAnErrorOthersAreStillWatched) {
  Write(Path("a.crt"), "");
  FileWatch w;
  EXPECT_FALSE(w.Watch({Path("a.crt"), "/nonexistent-ktlb-dir/b.crt"}).ok());
  Write(Path("a.crt"), "new");
  EXPECT_TRUE(Changed(w));
}

}  // namespace
}  // namespace ktlb
