# cython: language_level=3
"""Durable file publication on threads that never take the GIL (twin: ``commit_py.py``).

One job: create ``tmp`` (exclusively, 0600), write ``data``, fdatasync, close, rename it to
``final``, then fsync ``directory`` so the new name is durable too. Directory fsyncs are group
commits: one fsync of a directory makes every rename into it that finished before the fsync started
durable, so jobs renaming into the same directory while an fsync runs wait for the next one and share
it.

Why a kernel: a delivery done by Python threads takes and drops the GIL around every one of its
syscalls, and each handoff with the event loop thread is a futex round trip (about 30 per message
under load, measured with ``strace -c``). Here the event loop hands a job over under one mutex, the
threads run all the syscalls in C, and finished jobs come back in batches through an eventfd the loop
watches: the GIL is only ever held by the loop thread.

API (same in the twin): ``CommitQueue(threads)``, ``fileno()`` (readable when jobs finished),
``submit(token, tmp, final, directory, data)`` with ``bytes`` paths, ``drain()`` -> list of
``(token, errno)`` (0 = durable), ``close()`` (finishes the queued jobs, then joins the threads).
"""
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strcmp, strlen

import os


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigfillset(sigset_t *s)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)
    int SIG_BLOCK

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags, ...)
    int O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC, O_RDONLY, O_DIRECTORY

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write"(int fd, const void *buf, size_t n)
    int c_close "close"(int fd)
    int c_fdatasync "fdatasync"(int fd)
    int c_fsync "fsync"(int fd)
    int c_unlink "unlink"(const char *path)

cdef extern from "<stdio.h>" nogil:
    int c_rename "rename"(const char *old, const char *new)


cdef enum:
    NSLOTS = 256  # directories being fsynced at once; a job finding the table full fsyncs alone


cdef struct Job:
    long long token
    const char *tmp
    const char *final
    const char *directory
    const char *data
    size_t size
    int err
    Job *next


cdef struct DirSlot:
    char *path  # NULL: free
    uint64_t requested
    uint64_t done
    int running
    int users


cdef struct Shared:
    pthread_mutex_t mu
    pthread_cond_t work  # a job was queued, or stopping
    pthread_cond_t synced  # a directory fsync finished
    Job *pend_head
    Job *pend_tail
    Job *done_head
    int stopping
    int efd
    DirSlot slots[NSLOTS]


cdef int _open_retry(const char *path, int flags) noexcept nogil:
    cdef int fd
    while True:
        fd = c_open(path, flags, 0o600)
        if fd >= 0 or errno != EINTR:
            return fd


cdef int _fsync_dir(const char *path) noexcept nogil:
    cdef int fd = _open_retry(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    cdef int err = 0
    if fd < 0:
        return errno
    if c_fsync(fd) != 0:
        err = errno
    c_close(fd)
    return err


cdef int _store(Job *job) noexcept nogil:
    """tmp written and fdatasynced, then renamed to final; 0 or the errno. tmp never outlives a failure."""
    cdef int fd = _open_retry(job.tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC)
    cdef size_t off = 0
    cdef ssize_t n
    cdef int err = 0
    if fd < 0:
        return errno
    while off < job.size:
        n = c_write(fd, job.data + off, job.size - off)
        if n < 0:
            if errno == EINTR:
                continue
            err = errno
            break
        off += <size_t>n
    if err == 0 and c_fdatasync(fd) != 0:
        err = errno
    if c_close(fd) != 0 and err == 0:
        err = errno
    if err == 0 and c_rename(job.tmp, job.final) != 0:
        err = errno
    if err != 0:
        c_unlink(job.tmp)
    return err


cdef DirSlot *_slot(Shared *sh, const char *path) noexcept nogil:
    """The slot of ``path`` (created if needed); NULL if the table is full. Called with ``mu`` held."""
    cdef int i
    cdef int free_i = -1
    cdef size_t n
    for i in range(NSLOTS):
        if sh.slots[i].path == NULL:
            if free_i < 0:
                free_i = i
        elif strcmp(sh.slots[i].path, path) == 0:
            return &sh.slots[i]
    if free_i < 0:
        return NULL
    n = strlen(path) + 1
    sh.slots[free_i].path = <char *>malloc(n)
    if sh.slots[free_i].path == NULL:
        return NULL
    memcpy(sh.slots[free_i].path, path, n)
    sh.slots[free_i].requested = 0
    sh.slots[free_i].done = 0
    sh.slots[free_i].running = 0
    sh.slots[free_i].users = 0
    return &sh.slots[free_i]


cdef int _dir_sync(Shared *sh, const char *path) noexcept nogil:
    cdef DirSlot *slot
    cdef uint64_t ticket, target
    cdef int err = 0
    pthread_mutex_lock(&sh.mu)
    slot = _slot(sh, path)
    if slot == NULL:
        pthread_mutex_unlock(&sh.mu)
        return _fsync_dir(path)
    slot.users += 1
    slot.requested += 1
    ticket = slot.requested
    while slot.done < ticket:
        if slot.running:
            pthread_cond_wait(&sh.synced, &sh.mu)
            continue
        slot.running = 1
        target = slot.requested  # this fsync covers every rename that asked so far
        pthread_mutex_unlock(&sh.mu)
        err = _fsync_dir(path)
        pthread_mutex_lock(&sh.mu)
        slot.running = 0
        if err == 0 and target > slot.done:
            slot.done = target
        pthread_cond_broadcast(&sh.synced)
        if err != 0:
            break  # a waiter becomes the next runner and tries again for itself
    slot.users -= 1
    if slot.users == 0:
        free(slot.path)
        slot.path = NULL
    pthread_mutex_unlock(&sh.mu)
    return err


cdef void *_run(void *arg) noexcept nogil:
    cdef Shared *sh = <Shared *>arg
    cdef Job *job
    cdef sigset_t all_signals
    cdef uint64_t one = 1
    # Signals are for the event loop thread; syscalls here are never interrupted by them.
    sigfillset(&all_signals)
    pthread_sigmask(SIG_BLOCK, &all_signals, NULL)
    pthread_mutex_lock(&sh.mu)
    while True:
        while sh.pend_head == NULL and not sh.stopping:
            pthread_cond_wait(&sh.work, &sh.mu)
        job = sh.pend_head
        if job == NULL:
            break  # stopping, and every queued job is done
        sh.pend_head = job.next
        if sh.pend_head == NULL:
            sh.pend_tail = NULL
        pthread_mutex_unlock(&sh.mu)
        job.err = _store(job)
        if job.err == 0:
            job.err = _dir_sync(sh, job.directory)
        pthread_mutex_lock(&sh.mu)
        job.next = sh.done_head
        if sh.done_head == NULL:
            c_write(sh.efd, &one, 8)  # the loop drains every finished job per wake-up
        sh.done_head = job
    pthread_mutex_unlock(&sh.mu)
    return NULL


cdef class CommitQueue:
    cdef Shared *sh
    cdef pthread_t *threads
    cdef int nthreads
    cdef object efd
    cdef dict refs  # token -> the bytes objects a queued job points into (kept alive until drained)

    def __cinit__(self, int threads=8):
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.sh = <Shared *>calloc(1, sizeof(Shared))
        if self.sh == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.sh.mu, NULL)
        pthread_cond_init(&self.sh.work, NULL)
        pthread_cond_init(&self.sh.synced, NULL)
        self.refs = {}
        self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sh.efd = self.efd
        self.threads = <pthread_t *>calloc(threads, sizeof(pthread_t))
        if self.threads == NULL:
            raise MemoryError()
        cdef int i, rc
        for i in range(threads):
            rc = pthread_create(&self.threads[i], NULL, _run, self.sh)
            if rc != 0:
                self.close()
                raise OSError(rc, os.strerror(rc))
            self.nthreads += 1

    def fileno(self):
        if self.efd is None:
            raise ValueError("CommitQueue is closed")
        return self.efd

    def submit(self, long long token, bytes tmp not None, bytes final not None, bytes directory not None,
               bytes data not None):
        if self.sh == NULL or self.sh.stopping:
            raise ValueError("CommitQueue is closed")
        if token in self.refs:
            raise ValueError(f"token {token} is already queued")
        for path in (tmp, final, directory):
            if b"\0" in path:
                raise ValueError("embedded NUL byte in a path")
        cdef Job *job = <Job *>malloc(sizeof(Job))
        if job == NULL:
            raise MemoryError()
        self.refs[token] = (tmp, final, directory, data)
        job.token = token
        job.tmp = tmp
        job.final = final
        job.directory = directory
        job.data = data
        job.size = len(data)
        job.err = 0
        job.next = NULL
        with nogil:
            pthread_mutex_lock(&self.sh.mu)
            if self.sh.pend_tail == NULL:
                self.sh.pend_head = job
            else:
                self.sh.pend_tail.next = job
            self.sh.pend_tail = job
            pthread_cond_signal(&self.sh.work)
            pthread_mutex_unlock(&self.sh.mu)

    def drain(self):
        """Every job finished since the last call: ``[(token, errno), ...]`` (errno 0: durable)."""
        cdef Job *job
        cdef Job *nxt
        if self.sh == NULL:
            return []
        try:
            os.eventfd_read(self.efd)  # first: a job finishing after this read writes it again
        except BlockingIOError:
            pass
        with nogil:
            pthread_mutex_lock(&self.sh.mu)
            job = self.sh.done_head
            self.sh.done_head = NULL
            pthread_mutex_unlock(&self.sh.mu)
        out = []
        while job != NULL:
            nxt = job.next
            out.append((job.token, job.err))
            self.refs.pop(job.token, None)
            free(job)
            job = nxt
        out.reverse()  # oldest first
        return out

    def close(self):
        """Finish every queued job, join the threads; their results stay available to :meth:`drain`."""
        cdef int i
        if self.sh == NULL or self.threads == NULL:
            return
        with nogil:
            pthread_mutex_lock(&self.sh.mu)
            self.sh.stopping = 1
            pthread_cond_broadcast(&self.sh.work)
            pthread_mutex_unlock(&self.sh.mu)
            for i in range(self.nthreads):
                pthread_join(self.threads[i], NULL)
        self.nthreads = 0
        free(self.threads)
        self.threads = NULL

    def __dealloc__(self):
        cdef Job *job
        cdef Job *nxt
        if self.sh == NULL:
            return
        self.close()
        job = self.sh.done_head
        while job != NULL:
            nxt = job.next
            free(job)
            job = nxt
        pthread_cond_destroy(&self.sh.work)
        pthread_cond_destroy(&self.sh.synced)
        pthread_mutex_destroy(&self.sh.mu)
        free(self.sh)
        self.sh = NULL
        if self.efd is not None:
            os.close(self.efd)
            self.efd = None
