/*
 * Pod sandbox holder for the local cluster. containerd needs a "pause" image
 * to hold each pod's namespaces; none can be pulled here, so we build one.
 * It sleeps until asked to stop and, as PID 1 of the pod, reaps orphans.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {0};
  stop.sa_handler = on_stop;
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGTERM, &stop, NULL);

  struct sigaction child = {0};
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &child, NULL);

  for (;;) {
    pause();
  }
  return EXIT_SUCCESS;
}
