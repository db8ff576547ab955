"""The git commit a folder's code is at, read from the files of .git without running git: a
run's config.json records the commit that trained it. Nothing else of git is needed."""
import os


def commit(folder):
    """The commit checked out in the git work tree holding `folder`, read from its .git (a
    worktree's too) without running git; None outside a work tree or for a ref it cannot
    find."""
    path = os.path.abspath(folder)
    while not os.path.exists(os.path.join(path, '.git')):
        if os.path.dirname(path) == path:
            return None
        path = os.path.dirname(path)
    dot_git = os.path.join(path, '.git')
    try:
        if os.path.isfile(dot_git):  # a worktree: "gitdir: PATH"
            with open(dot_git) as f:
                dot_git = os.path.join(path, f.read().split('gitdir:', 1)[1].strip())
        common = dot_git
        if os.path.isfile(os.path.join(dot_git, 'commondir')):
            with open(os.path.join(dot_git, 'commondir')) as f:
                common = os.path.join(dot_git, f.read().strip())
        with open(os.path.join(dot_git, 'HEAD')) as f:
            head = f.read().strip()
        if not head.startswith('ref: '):
            return head  # a detached HEAD is the commit itself
        ref = head[len('ref: '):]
        if os.path.isfile(os.path.join(common, ref)):
            with open(os.path.join(common, ref)) as f:
                return f.read().strip()
        with open(os.path.join(common, 'packed-refs')) as f:
            return next((line.split()[0] for line in f if line.rstrip().endswith(' ' + ref)),
                        None)
    except (OSError, IndexError):
        return None
