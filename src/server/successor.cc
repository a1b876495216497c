#include "successor.h"

#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

extern char** environ;

namespace ktlb {

namespace {

std::string SelfExecutable() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  // Replaced before we looked (a start racing an install): the path is
  // still where the binary lives.
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.size() > kDeleted.size() &&
      path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0) {
    path.resize(path.size() - kDeleted.size());
  }
  return path;
}

}  // namespace

Successor::Successor(std::string config_path)
    : binary_(SelfExecutable()), config_path_(std::move(config_path)) {}

bool Successor::Spawn() {
  Reap();  // one that exited unseen (no pidfd) does not block this one
  if (pid_ > 0) {
    fprintf(stderr, "ktlb: SIGUSR2: successor %d is still starting; ignored\n", pid_);
    return false;
  }
  if (binary_.empty()) {
    fprintf(stderr, "ktlb: SIGUSR2: cannot tell which binary runs; use ktlb --upgrade\n");
    return false;
  }
  // posix_spawn (vfork-like) rather than fork: this process has threads.
  // The child must not inherit our blocked signals (the signalfd's), the
  // ignored SIGPIPE, or any descriptor: the sockets come over the hand-off.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigfillset(&defaults);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  const char* argv[] = {binary_.c_str(), "--config", config_path_.c_str(), "--upgrade", nullptr};
  pid_t pid = -1;
  int err = posix_spawn(&pid, binary_.c_str(), &actions, &attr, const_cast<char**>(argv),
                        environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err != 0) {
    fprintf(stderr, "ktlb: SIGUSR2: cannot start %s: %s\n", binary_.c_str(), strerror(err));
    return false;
  }
  pid_ = pid;
  pidfd_.reset(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  fprintf(stderr, "ktlb: SIGUSR2: started successor %d (%s --upgrade)\n", pid, binary_.c_str());
  return true;
}

void Successor::Reap() {
  if (pid_ <= 0) return;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return;
  if (WIFEXITED(status)) {
    fprintf(stderr, "ktlb: successor %d exited with status %d before taking over; still serving\n",
            pid_, WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    fprintf(stderr, "ktlb: successor %d was killed by %s before taking over; still serving\n",
            pid_, strsignal(WTERMSIG(status)));
  }
  pid_ = -1;
  pidfd_.reset();
}

void AdoptWatchdog() {
  const char* watchdog_pid = getenv("WATCHDOG_PID");
  if (watchdog_pid == nullptr || atol(watchdog_pid) != static_cast<long>(getppid())) return;
  setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1);
}

}  // namespace ktlb
