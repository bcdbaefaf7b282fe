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
``submit(token, tmp, final, directory, data)`` with ``bytes`` paths and data, ``drain()`` -> list
of ``(token, errno, published)``: errno 0 means durable; ``published`` says whether the rename was
done (an error after it came from the directory fsync), ``close()`` (finishes the queued jobs, then
joins the threads). Bad calls raise, in this order and in both twins: ValueError (closed, or used
in a forked child), TypeError (a token that is not an integer, an argument that is not exactly
``bytes``), OverflowError (a token outside 64 bits), ValueError (a NUL in a path, a token queued
and not yet drained).
"""
cimport cython
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, strcmp, strlen

import operator
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
    int SIG_SETMASK

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags, ...)
    int O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC, O_RDONLY, O_DIRECTORY

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write"(int fd, const void *buf, size_t n)
    int c_close "close"(int fd)
    int c_fdatasync "fdatasync"(int fd)
    int c_fsync "fsync"(int fd)
    int c_unlink "unlink"(const char *path)
    int c_getpid "getpid"()

cdef extern from "<stdio.h>" nogil:
    int c_rename "rename"(const char *old, const char *new)


cdef enum:
    NSLOTS = 256  # directories being fsynced at once; a job finding the table full fsyncs alone


cdef struct Job:
    long long token
    PyObject *keep  # a tuple of the four bytes objects below: owned by the job until it is drained
    const char *tmp
    const char *final
    const char *directory
    const char *data
    size_t size
    int err
    int published  # the rename was done (an error after it is the directory fsync's)
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
    """tmp written and fdatasynced, then renamed to final; 0 or the errno. tmp never outlives a
    failure (except a failed open: the name may be another writer's)."""
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
    cdef uint64_t one = 1
    # Every signal is blocked here (inherited from __cinit__, which creates the threads that way):
    # signals are for the event loop thread, and these syscalls are never interrupted by them.
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
            job.published = 1
            job.err = _dir_sync(sh, job.directory)
        pthread_mutex_lock(&sh.mu)
        job.next = sh.done_head
        if sh.done_head == NULL:
            c_write(sh.efd, &one, 8)  # the loop drains every finished job per wake-up
        sh.done_head = job
    pthread_mutex_unlock(&sh.mu)
    return NULL


cdef void _free_jobs(Job *job) noexcept:
    """Free a list of finished jobs (GIL held: drops their references)."""
    cdef Job *nxt
    while job != NULL:
        nxt = job.next
        Py_DECREF(<object>job.keep)
        free(job)
        job = nxt


@cython.no_gc_clear  # the references the C threads read must outlive close() in __dealloc__
cdef class CommitQueue:
    cdef Shared *sh
    cdef pthread_t *threads
    cdef int nthreads
    cdef int pid  # the creating process: threads do not survive fork()
    cdef bint closed
    cdef set queued  # tokens submitted and not yet drained

    def __cinit__(self, threads=8):
        cdef int i, rc
        cdef int n = operator.index(threads)
        cdef sigset_t all_signals, old
        if n < 1:
            raise ValueError("threads must be at least 1")
        self.queued = set()
        self.sh = <Shared *>calloc(1, sizeof(Shared))
        if self.sh == NULL:
            raise MemoryError()
        self.sh.efd = -1
        pthread_mutex_init(&self.sh.mu, NULL)
        pthread_cond_init(&self.sh.work, NULL)
        pthread_cond_init(&self.sh.synced, NULL)
        self.sh.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.pid = c_getpid()
        self.threads = <pthread_t *>calloc(n, sizeof(pthread_t))
        if self.threads == NULL:
            raise MemoryError()
        # New threads start with every signal blocked: they are for the event loop thread.
        sigfillset(&all_signals)
        pthread_sigmask(SIG_BLOCK, &all_signals, &old)
        try:
            for i in range(n):
                rc = pthread_create(&self.threads[i], NULL, _run, self.sh)
                if rc != 0:
                    self.close()
                    raise OSError(rc, os.strerror(rc))
                self.nthreads += 1
        finally:
            pthread_sigmask(SIG_SETMASK, &old, NULL)

    cdef _check_open(self):
        if self.closed or self.sh == NULL:
            raise ValueError("CommitQueue is closed")
        if c_getpid() != self.pid:
            raise ValueError("CommitQueue used in a forked child (its threads did not survive fork)")

    def fileno(self):
        self._check_open()
        return self.sh.efd

    def submit(self, token, tmp, final, directory, data):
        self._check_open()
        token = operator.index(token)
        for value in (tmp, final, directory, data):
            if type(value) is not bytes:
                raise TypeError(f"expected bytes, got {type(value).__name__}")
        cdef long long tok = token  # OverflowError outside 64 bits
        for path in (tmp, final, directory):
            if b"\0" in path:
                raise ValueError("embedded NUL byte in a path")
        if token in self.queued:
            raise ValueError(f"token {token} is already queued")
        cdef Job *job = <Job *>calloc(1, sizeof(Job))
        if job == NULL:
            raise MemoryError()
        keep = (tmp, final, directory, data)
        Py_INCREF(keep)  # released by drain() or __dealloc__, once no thread reads these buffers
        job.keep = <PyObject *>keep
        job.token = tok
        job.tmp = <bytes>tmp
        job.final = <bytes>final
        job.directory = <bytes>directory
        job.data = <bytes>data
        job.size = len(<bytes>data)
        self.queued.add(token)
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
        """Every job finished since the last call, oldest first: ``[(token, errno, published), ...]``."""
        cdef Job *job
        cdef Job *head
        if self.sh == NULL:
            return []
        try:
            os.eventfd_read(self.sh.efd)  # first: a job finishing after this read writes it again
        except BlockingIOError:
            pass
        with nogil:
            pthread_mutex_lock(&self.sh.mu)
            head = self.sh.done_head
            self.sh.done_head = NULL
            pthread_mutex_unlock(&self.sh.mu)
        out = []
        job = head
        while job != NULL:
            out.append((job.token, job.err, bool(job.published)))
            self.queued.discard(job.token)
            job = job.next
        _free_jobs(head)
        out.reverse()
        return out

    def close(self):
        """Finish every queued job, join the threads; their results stay available to :meth:`drain`."""
        cdef int i
        self.closed = True
        if self.sh == NULL or self.threads == NULL:
            return
        if c_getpid() != self.pid:
            return  # a forked child: the threads are not ours to join
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
        if self.sh == NULL:
            return
        if self.threads != NULL and c_getpid() != self.pid:
            return  # a forked child's copy: leak it rather than free what no thread here may touch
        self.close()
        _free_jobs(self.sh.done_head)
        self.sh.done_head = NULL
        pthread_cond_destroy(&self.sh.work)
        pthread_cond_destroy(&self.sh.synced)
        pthread_mutex_destroy(&self.sh.mu)
        if self.sh.efd >= 0:
            os.close(self.sh.efd)
        free(self.sh)
        self.sh = NULL
