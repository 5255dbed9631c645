fn main() {
    build_commit::emit();
}
